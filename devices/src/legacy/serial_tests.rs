use std::os::unix::net::UnixStream;

use event_manager::{EventManager, SubscriberOps};

use super::*;

const DATA: u64 = 0;
const IER: u64 = 1;
const IIR: u64 = 2;
const LSR: u64 = 5;
const IER_RDA: u8 = 0x01;
const IER_THR: u8 = 0x02;
const LSR_DATA_READY: u8 = 0x01;

/// A writer the test can look into after handing it to the UART.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that always fails, like a closed stdout.
struct BrokenPipe;

impl Write for BrokenPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn serial_with(out: Box<dyn Write + Send>) -> (Arc<Mutex<Serial>>, Arc<EventFd>) {
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let serial = Serial::new(irq.clone(), out).unwrap();
    (Arc::new(Mutex::new(serial)), irq)
}

fn read_byte(serial: &Arc<Mutex<Serial>>, offset: u64) -> u8 {
    let mut b = [0xffu8];
    serial.lock().unwrap().read(offset, &mut b);
    b[0]
}

fn write_byte(serial: &Arc<Mutex<Serial>>, offset: u64, value: u8) {
    serial.lock().unwrap().write(offset, &[value]);
}

/// Drains every byte the guest could read now.
fn guest_read_all(serial: &Arc<Mutex<Serial>>) -> Vec<u8> {
    let mut out = Vec::new();
    while read_byte(serial, LSR) & LSR_DATA_READY != 0 {
        out.push(read_byte(serial, DATA));
    }
    out
}

#[test]
fn write_when_guest_prints_then_output_reaches_writer_and_irq_fires() {
    let buf = SharedBuf::default();
    let (serial, irq) = serial_with(Box::new(buf.clone()));
    write_byte(&serial, IER, IER_THR);
    // Enabling THR interrupts raises one at once; the driver acknowledges by reading IIR.
    assert_eq!(irq.read().unwrap(), 1);
    read_byte(&serial, IIR);

    for b in b"hi\n" {
        write_byte(&serial, DATA, *b);
        read_byte(&serial, IIR);
    }

    assert_eq!(&*buf.0.lock().unwrap(), b"hi\n");
    assert_eq!(irq.read().unwrap(), 3, "one THR-empty interrupt per byte");
}

#[test]
fn access_when_bad_width_or_offset_then_ignored_without_panic() {
    let buf = SharedBuf::default();
    let (serial, _irq) = serial_with(Box::new(buf.clone()));
    let mut wide = [0xffu8; 2];
    serial.lock().unwrap().read(DATA, &mut wide);
    assert_eq!(wide, [0, 0]);
    serial.lock().unwrap().write(DATA, b"ab");
    serial.lock().unwrap().write(300, b"a");
    serial.lock().unwrap().write(DATA, b"");
    assert_eq!(read_byte(&serial, 9), 0);
    assert!(buf.0.lock().unwrap().is_empty());
}

#[test]
fn write_when_output_fails_then_counted_as_lost() {
    let (serial, _irq) = serial_with(Box::new(BrokenPipe));
    write_byte(&serial, DATA, b'x');
    write_byte(&serial, DATA, b'y');
    assert_eq!(serial.lock().unwrap().lost_output(), 2);
}

fn input_setup() -> (
    Arc<Mutex<Serial>>,
    Arc<EventFd>,
    UnixStream,
    EventManager<SerialInput>,
    event_manager::SubscriberId,
) {
    let (serial, irq) = serial_with(Box::new(SharedBuf::default()));
    write_byte(&serial, IER, IER_RDA);
    let (host_end, vmm_end) = UnixStream::pair().unwrap();
    let input = SerialInput::new(serial.clone(), Box::new(vmm_end)).unwrap();
    let mut em = EventManager::new().unwrap();
    let id = em.add_subscriber(input);
    (serial, irq, host_end, em, id)
}

#[test]
fn input_when_host_types_then_guest_reads_bytes_and_gets_irq() {
    let (serial, irq, mut host, mut em, id) = input_setup();
    let _ = irq.read();

    host.write_all(b"ls\r").unwrap();
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);

    assert!(irq.read().unwrap() >= 1, "received-data interrupt");
    assert_eq!(guest_read_all(&serial), b"ls\r");
    assert_eq!(em.subscriber_mut(id).unwrap().forwarded(), 3);
}

#[test]
fn input_when_fifo_full_then_stops_polling_until_guest_drains() {
    let (serial, _irq, mut host, mut em, id) = input_setup();
    let sent: Vec<u8> = (0..100u8).collect();
    host.write_all(&sent).unwrap();

    // Fill the FIFO (64 bytes), then one more event finds it full and stops watching.
    em.run_with_timeout(1000).unwrap();
    assert_eq!(serial.lock().unwrap().fifo_capacity(), 0);
    em.run_with_timeout(1000).unwrap();
    // No busy loop: the input is still readable, yet nothing is dispatched.
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
    assert_eq!(em.subscriber_mut(id).unwrap().forwarded(), 64);

    let mut received = guest_read_all(&serial);
    // The wake-up re-arms input, then the rest arrives.
    for _ in 0..4 {
        em.run_with_timeout(200).unwrap();
    }
    received.extend(guest_read_all(&serial));
    assert_eq!(received, sent);
}

#[test]
fn input_when_host_closes_then_unregistered() {
    let (serial, _irq, host, mut em, id) = input_setup();
    drop(host);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert!(em.subscriber_mut(id).unwrap().is_closed());
    // Nothing is watched any more, so the loop stays quiet.
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
    assert!(guest_read_all(&serial).is_empty());
}

#[test]
fn is_pollable_input_when_socket_file_or_null_then_only_socket() {
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(is_pollable_input(a.as_raw_fd()));
    let null = std::fs::File::open("/dev/null").unwrap();
    assert!(!is_pollable_input(null.as_raw_fd()));
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert!(!is_pollable_input(file.as_raw_fd()));
    assert!(!is_pollable_input(-1));
}

/// An interrupt line that always fails, like an irqfd whose VM is gone.
struct DeadIrq;

impl Interrupt for DeadIrq {
    fn trigger(&self) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

#[test]
fn enqueue_when_interrupt_fails_then_bytes_still_counted_and_readable() {
    let serial = Serial::new(Arc::new(DeadIrq), Box::new(SharedBuf::default())).unwrap();
    let serial = Arc::new(Mutex::new(serial));
    write_byte(&serial, IER, IER_RDA);
    let queued = serial.lock().unwrap().enqueue_input(b"abc");
    assert_eq!(queued, 3);
    assert_eq!(guest_read_all(&serial), b"abc");
}

#[test]
fn access_when_100k_bad_widths_and_offsets_then_logged_bytes_bounded() {
    let cap = crate::ratelimit::capture::install();
    // Rate-limited call sites the flood hits.
    const SITES: usize = 3;
    let buf = SharedBuf::default();
    let (serial, _irq) = serial_with(Box::new(buf.clone()));
    let before = cap.bytes_from("serial");
    let started = std::time::Instant::now();
    let mut wide = [0u8; 4];
    for _ in 0..100_000 {
        let mut s = serial.lock().unwrap();
        s.read(DATA, &mut wide);
        s.write(DATA, b"ab");
        s.write(300, b"a");
    }
    let logged = cap.bytes_from("serial") - before;
    eprintln!("flood: {logged} bytes logged");
    assert!(logged > 0, "nothing was logged");
    // Unthrottled this would be ~12 MB.
    // At most LINES_PER_WINDOW lines (under 200 bytes each) per call site per window.
    let windows = started.elapsed().as_secs() + 2;
    let bound = windows as usize * crate::ratelimit::LINES_PER_WINDOW as usize * 200 * SITES;
    assert!(logged <= bound, "{logged} bytes logged, bound {bound}");
    assert!(buf.0.lock().unwrap().is_empty());
}
