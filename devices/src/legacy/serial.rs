//! COM1: a 16550A UART (vm-superio) on port I/O, plus stdin forwarding.
//!
//! Output goes to any writer (stdout or a log file); vm-superio flushes after every byte so
//! that a guest prompt without a newline still shows up. Input comes from [`SerialInput`], an
//! event-manager subscriber that reads the host's stdin (a TTY or a pipe) when it is readable
//! and the UART's receive FIFO has room.
//!
//! Flow control without busy looping: when the FIFO is full the subscriber stops watching
//! stdin and arms a wake-up; when the guest empties the FIFO, the UART's `in_buffer_empty`
//! event fires the wake-up eventfd and the subscriber watches stdin again.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::interrupt::Interrupt;

/// COM1's first port.
pub const COM1_PORT: u64 = 0x3f8;
/// Ports COM1 occupies.
pub const COM1_LEN: u64 = 8;
/// COM1's GSI.
pub const COM1_GSI: u32 = 4;

/// Adapts our [`Interrupt`] to vm-superio's trigger.
struct IrqTrigger(Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// Wakes [`SerialInput`] when the guest drained the receive FIFO, but only if it asked to be.
struct InputWakeup {
    armed: AtomicBool,
    evt: EventFd,
}

impl SerialEvents for InputWakeup {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // Called on every data-register read that leaves the FIFO empty; only the first
        // one after the FIFO filled up needs to wake the event loop.
        if self.armed.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.evt.write(1) {
                crate::guest_error!("serial: cannot wake the input handler: {e}");
            }
        }
    }
}

type Uart = vm_superio::Serial<IrqTrigger, Arc<InputWakeup>, Box<dyn Write + Send>>;

/// The UART as a bus device. Share it as `Arc<Mutex<Serial>>` between the port I/O bus and
/// [`SerialInput`].
pub struct Serial {
    uart: Uart,
    wakeup: Arc<InputWakeup>,
    lost_output: u64,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("lost_output", &self.lost_output)
            .finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART raising `irq` (the irqfd of GSI 4) and writing guest output to `out`.
    pub fn new(irq: Arc<dyn Interrupt>, out: Box<dyn Write + Send>) -> io::Result<Self> {
        let wakeup = Arc::new(InputWakeup {
            armed: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
        });
        Ok(Self {
            uart: vm_superio::Serial::with_events(IrqTrigger(irq), wakeup.clone(), out),
            wakeup,
            lost_output: 0,
        })
    }

    /// Bytes of guest output the writer refused (e.g. a closed stdout).
    pub fn lost_output(&self) -> u64 {
        self.lost_output
    }

    /// Room left in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues `input` for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        if input.is_empty() || room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(e) => {
                // The bytes are queued before the interrupt is raised, so they still count.
                crate::guest_error!("serial: cannot deliver input interrupt: {e:?}");
                input.len().min(room)
            }
        }
    }

    /// Arms the wake-up: the next time the guest empties the FIFO, [`SerialInput`] resumes.
    /// Callers hold the device lock across the capacity check and this call, so the guest
    /// cannot drain the FIFO in between and miss the wake-up.
    fn arm_wakeup(&self) {
        self.wakeup.armed.store(true, Ordering::Release);
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        data.fill(0);
        match (u8::try_from(offset), data) {
            (Ok(off), [byte]) if offset < COM1_LEN => *byte = self.uart.read(off),
            _ => crate::guest_warn!("serial: {len}-byte read at offset {offset} ignored"),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(off), [value]) = (u8::try_from(offset), data) else {
            crate::guest_warn!(
                "serial: {}-byte write at offset {offset} ignored",
                data.len()
            );
            return;
        };
        if offset >= COM1_LEN {
            crate::guest_warn!("serial: write at offset {offset} ignored");
            return;
        }
        if let Err(e) = self.uart.write(off, *value) {
            // Only the first loss is worth a log line: a closed stdout would repeat it for
            // every byte the guest prints.
            if self.lost_output == 0 {
                crate::guest_warn!("serial: guest output lost: {e:?}");
            }
            self.lost_output += 1;
        }
    }
}

/// Where input comes from: the host's stdin in the VMM, a pipe or socket in tests.
pub trait InputSource: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> InputSource for T {}

/// Whether `fd` can be watched with epoll for input (a TTY, pipe or socket). Regular files
/// and /dev/null cannot; the VMM then simply does not forward stdin.
pub fn is_pollable_input(fd: RawFd) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat only writes into the provided, properly sized stat buffer.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it filled the buffer (and it was zero-initialised anyway).
    let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    // A character device is only pollable if it is a terminal (/dev/null is not).
    // SAFETY: isatty only inspects the fd.
    let tty = mode == libc::S_IFCHR && unsafe { libc::isatty(fd) } == 1;
    tty || mode == libc::S_IFIFO || mode == libc::S_IFSOCK
}

const TOKEN_INPUT: u32 = 0;
const TOKEN_WAKEUP: u32 = 1;

/// Forwards host input to the UART. Add it to the VMM's event manager.
pub struct SerialInput {
    serial: Arc<Mutex<Serial>>,
    input: Box<dyn InputSource>,
    wakeup_evt: EventFd,
    /// Whether the input fd is currently watched.
    watching: bool,
    /// EOF or a read error: never watch the input again.
    closed: bool,
    forwarded: u64,
}

impl std::fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialInput")
            .field("watching", &self.watching)
            .field("closed", &self.closed)
            .field("forwarded", &self.forwarded)
            .finish_non_exhaustive()
    }
}

impl SerialInput {
    /// Forwards `input` (must be pollable, see [`is_pollable_input`]) into `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>, input: Box<dyn InputSource>) -> io::Result<Self> {
        let wakeup_evt = serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wakeup
            .evt
            .try_clone()?;
        Ok(Self {
            serial,
            input,
            wakeup_evt,
            watching: false,
            closed: false,
            forwarded: 0,
        })
    }

    /// Bytes handed to the guest so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    /// Whether the input reached EOF or failed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn watch_input(&mut self, ops: &mut EventOps) {
        let events = Events::with_data_raw(self.input.as_raw_fd(), TOKEN_INPUT, EventSet::IN);
        match ops.add(events) {
            Ok(()) => self.watching = true,
            Err(e) => {
                log::error!("serial: cannot watch input: {e}");
                self.closed = true;
            }
        }
    }

    fn unwatch_input(&mut self, ops: &mut EventOps) {
        if self.watching {
            if let Err(e) = ops.remove(Events::empty_raw(self.input.as_raw_fd())) {
                log::warn!("serial: cannot stop watching input: {e}");
            }
            self.watching = false;
        }
    }

    fn handle_input(&mut self, ops: &mut EventOps) {
        let room = {
            let serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
            let room = serial.fifo_capacity();
            if room == 0 {
                // Wait for the guest to drain the FIFO instead of spinning on a readable fd.
                // Armed under the lock, so the guest cannot drain it unnoticed in between.
                serial.arm_wakeup();
            }
            room
        };
        if room == 0 {
            self.unwatch_input(ops);
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        // One read per readiness event. The UART is not locked during the read: should the
        // read block after all (someone else drained stdin), the vCPUs keep running. Only
        // this handler fills the FIFO, so the room measured above can only have grown.
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                log::info!("serial: input closed (EOF); no more guest input");
                self.closed = true;
                self.unwatch_input(ops);
            }
            Ok(n) => {
                let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
                let queued = serial.enqueue_input(&buf[..n]);
                self.forwarded += queued as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                log::error!("serial: reading input failed: {e}; no more guest input");
                self.closed = true;
                self.unwatch_input(ops);
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_INPUT => self.handle_input(ops),
            TOKEN_WAKEUP => {
                let _ = self.wakeup_evt.read();
                if !self.closed && !self.watching {
                    self.watch_input(ops);
                }
            }
            other => log::warn!("serial: unexpected event token {other}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let wakeup = Events::with_data(&self.wakeup_evt, TOKEN_WAKEUP, EventSet::IN);
        if let Err(e) = ops.add(wakeup) {
            log::error!("serial: cannot watch the input wake-up eventfd: {e}");
        }
        self.watch_input(ops);
    }
}

#[cfg(test)]
#[path = "serial_tests.rs"]
mod tests;
