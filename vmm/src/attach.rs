//! Device attach steps: each puts one device on a bus, wires its interrupt and events, and
//! fails with its own named error.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arch::acpi::VirtioMmioDesc;
use arch::layout;
use devices::bus::{Bus, BusError, SharedBusDevice};
use devices::exit::ExitRequest;
use devices::interrupt::Interrupt;
use devices::legacy::serial::{is_pollable_input, Serial, SerialInput};
use devices::legacy::{
    acpi_pm::AcpiPm, boot_timer::BootTimer, ged::Ged, i8042::I8042, pvpanic::PvPanic,
};
use devices::virtio::block::{Backend, BackendError, Block, CacheMode, VolumeOptions};
use devices::virtio::fs::Fs;
use devices::virtio::net::{Net, NetCounters, NetError, Tap, TapError};
use devices::virtio::{MmioTransport, VirtioDevice, MMIO_LEN, QUEUE_NOTIFY_OFFSET};
use event_manager::SubscriberOps;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmconfig::{CacheConfig, MmioDiscovery, NetConfig, SerialConfig, VmConfig, VolumeConfig};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::builder::Subscribers;
use crate::control::PowerButton;
use crate::fs_server::{ConnectedShare, FsServer};
use crate::timing::{Milestone, Timing};

/// Errors attaching a device, named after the device and step.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("create the irqfd for GSI {gsi}")]
    CreateIrqfd {
        gsi: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("register the irqfd for GSI {gsi} with KVM")]
    RegisterIrqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("place {device} on the bus")]
    Bus {
        device: &'static str,
        #[source]
        source: BusError,
    },
    #[error("open the serial output file {path}")]
    OpenSerialFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("create the serial port")]
    CreateSerial(#[source] std::io::Error),
    #[error("create the {0} device")]
    CreateDevice(&'static str, #[source] std::io::Error),
    #[error("create the virtio-mmio transport for {device}")]
    CreateTransport {
        device: &'static str,
        #[source]
        source: devices::virtio::TransportError,
    },
    #[error("register queue {queue} notification of {device} as an ioeventfd")]
    RegisterIoevent {
        device: &'static str,
        queue: usize,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("open the TAP for virtio-net")]
    OpenTap(#[source] TapError),
    #[error("create the virtio-net device on TAP {tap}")]
    CreateNet {
        tap: String,
        #[source]
        source: NetError,
    },
    #[error("start the virtio-fs server and connect the shares")]
    SpawnFsServer(#[source] crate::fs_server::FsServerError),
    #[error("create the virtio-fs device of share {tag} (vhost-user handshake)")]
    CreateFs {
        tag: String,
        #[source]
        source: devices::virtio::fs::FsError,
    },
    #[error("open volume {index} for virtio-blk")]
    OpenVolume {
        index: usize,
        #[source]
        source: BackendError,
    },
    #[error("too many virtio devices (at most {})", layout::MAX_VIRTIO_DEVICES)]
    TooManyVirtioDevices,
}

/// The platform being assembled: the two buses and what later steps need to know about the
/// attached devices.
pub struct Platform {
    exit: Arc<ExitRequest>,
    pio: Bus,
    mmio: Bus,
    frozen: Option<(Arc<Bus>, Arc<Bus>)>,
    ged: Option<Arc<Mutex<Ged>>>,
    i8042: Option<Arc<Mutex<I8042>>>,
    virtio: Vec<VirtioMmioDesc>,
    /// Per-TAP counters of the virtio-net devices, for the control socket.
    pub net_counters: Vec<(String, Arc<NetCounters>)>,
}

impl Platform {
    pub fn new(exit: Arc<ExitRequest>) -> Self {
        Self {
            exit,
            pio: Bus::new(),
            mmio: Bus::new(),
            frozen: None,
            ged: None,
            i8042: None,
            virtio: Vec::new(),
            net_counters: Vec::new(),
        }
    }

    /// The virtio-mmio devices in slot order, for ACPI and the kernel command line.
    pub fn virtio_descs(&self) -> Vec<VirtioMmioDesc> {
        self.virtio.clone()
    }

    /// Freezes the buses (no more devices) and hands out shared references for the vCPUs.
    pub fn buses(&mut self) -> (Arc<Bus>, Arc<Bus>) {
        let (pio, mmio) = self.frozen.get_or_insert_with(|| {
            (
                Arc::new(std::mem::take(&mut self.pio)),
                Arc::new(std::mem::take(&mut self.mmio)),
            )
        });
        (pio.clone(), mmio.clone())
    }

    /// What SIGTERM uses to ask the guest to stop, for the control loop: the ACPI power
    /// button when the guest uses ACPI (`guest_acpi`), Ctrl-Alt-Del through the i8042
    /// otherwise (a guest booted with `acpi=off` does not listen to the button).
    pub fn power_button(&self, guest_acpi: bool) -> Box<dyn PowerButton> {
        if guest_acpi {
            Box::new(GedButton(self.ged.clone()))
        } else {
            Box::new(CtrlAltDel(self.i8042.clone()))
        }
    }
}

struct GedButton(Option<Arc<Mutex<Ged>>>);

impl PowerButton for GedButton {
    fn press(&mut self) {
        match &self.0 {
            Some(ged) => {
                let ged = ged.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = ged.press_power_button() {
                    log::error!("power button: {e}");
                }
            }
            None => log::warn!("power button: no ACPI GED device"),
        }
    }
}

struct CtrlAltDel(Option<Arc<Mutex<I8042>>>);

impl PowerButton for CtrlAltDel {
    fn press(&mut self) {
        match &self.0 {
            Some(i8042) => {
                log::info!("guest without ACPI: sending Ctrl-Alt-Del through the i8042");
                i8042
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .send_ctrl_alt_del();
            }
            None => log::warn!("Ctrl-Alt-Del: no i8042 device"),
        }
    }
}

/// An irqfd registered with KVM for `gsi`.
fn irqfd(vm: &VmFd, gsi: u32) -> Result<Arc<EventFd>, AttachError> {
    let evt =
        EventFd::new(EFD_NONBLOCK).map_err(|source| AttachError::CreateIrqfd { gsi, source })?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|source| AttachError::RegisterIrqfd { gsi, source })?;
    Ok(Arc::new(evt))
}

fn insert(
    bus: &mut Bus,
    device: &'static str,
    dev: SharedBusDevice,
    base: u64,
    len: u64,
) -> Result<(), AttachError> {
    bus.insert(dev, base, len)
        .map_err(|source| AttachError::Bus { device, source })
}

/// COM1 at 0x3f8 (IRQ 4), writing to stdout, a file, or nowhere; stdin feeds it when the
/// console is stdout.
pub fn attach_serial(
    vm: &VmFd,
    platform: &mut Platform,
    subscribers: &mut Subscribers,
    cfg: &VmConfig,
) -> Result<(), AttachError> {
    let out: Box<dyn Write + Send> = match &cfg.serial {
        SerialConfig::Stdout => Box::new(std::io::stdout()),
        SerialConfig::None => Box::new(std::io::sink()),
        SerialConfig::File(file) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .map_err(|source| AttachError::OpenSerialFile {
                    path: file.display().to_string(),
                    source,
                })?,
        ),
    };
    let irq: Arc<dyn Interrupt> = irqfd(vm, layout::SERIAL_GSI)?;
    let serial = Arc::new(Mutex::new(
        Serial::new(irq, out).map_err(AttachError::CreateSerial)?,
    ));
    insert(&mut platform.pio, "serial port", serial.clone(), 0x3f8, 8)?;
    if matches!(cfg.serial, SerialConfig::Stdout) && is_pollable_input(libc::STDIN_FILENO) {
        let input = SerialInput::new(serial, Box::new(std::io::stdin()))
            .map_err(AttachError::CreateSerial)?;
        subscribers.add_subscriber(Arc::new(Mutex::new(input)));
    }
    Ok(())
}

/// The i8042 controller at 0x60/0x64 with its keyboard on IRQ 1: the keyboard-controller
/// reset path and Ctrl-Alt-Del.
pub fn attach_i8042(vm: &VmFd, platform: &mut Platform) -> Result<(), AttachError> {
    let irq: Arc<dyn Interrupt> = irqfd(vm, layout::I8042_GSI)?;
    let dev = Arc::new(Mutex::new(I8042::new(platform.exit.clone(), irq)));
    insert(&mut platform.pio, "i8042", dev.clone(), 0x60, 5)?;
    platform.i8042 = Some(dev);
    Ok(())
}

/// The CMOS RTC at ports 0x70/0x71 (probed by guests without ACPI).
pub fn attach_cmos(platform: &mut Platform) -> Result<(), AttachError> {
    let dev = Arc::new(Mutex::new(devices::legacy::cmos::Cmos::new()));
    insert(&mut platform.pio, "CMOS RTC", dev, 0x70, 2)
}

/// The ACPI PM register (sleep control/status and reset) at port 0x3c0.
pub fn attach_acpi_pm(platform: &mut Platform) -> Result<(), AttachError> {
    let dev = Arc::new(Mutex::new(AcpiPm::new(platform.exit.clone())));
    insert(
        &mut platform.pio,
        "ACPI PM register",
        dev,
        u64::from(layout::ACPI_PM_PORT),
        1,
    )
}

/// The pvpanic port, so a guest kernel panic ends the run as a crash.
pub fn attach_pvpanic(platform: &mut Platform) -> Result<(), AttachError> {
    let dev = Arc::new(Mutex::new(PvPanic::new(platform.exit.clone())));
    insert(
        &mut platform.pio,
        "pvpanic",
        dev,
        u64::from(layout::PVPANIC_PORT),
        1,
    )
}

/// The ACPI generic event device that carries power-button presses.
pub fn attach_ged(vm: &VmFd, platform: &mut Platform) -> Result<(), AttachError> {
    let irq: Arc<dyn Interrupt> = irqfd(vm, layout::GED_GSI)?;
    let ged = Arc::new(Mutex::new(Ged::new(irq)));
    insert(
        &mut platform.mmio,
        "ACPI GED",
        ged.clone(),
        layout::GED_ADDR,
        layout::GED_SIZE,
    )?;
    platform.ged = Some(ged);
    Ok(())
}

/// The Firecracker-compatible boot timer at 0xd0000000. Its first write is also the guest's
/// "reached init" signal for systemd (`READY=1`, [`crate::notify`]).
pub fn attach_boot_timer(platform: &mut Platform, timing: Timing) -> Result<(), AttachError> {
    let notified = std::sync::atomic::AtomicBool::new(false);
    let timer = BootTimer::new(timing.start()).with_callback(Box::new(move |elapsed| {
        timing.mark_at(Milestone::BootTimer, elapsed.as_micros());
        crate::notify::ready_once(&notified, elapsed.as_micros());
    }));
    insert(
        &mut platform.mmio,
        "boot timer",
        Arc::new(Mutex::new(timer)),
        layout::BOOT_TIMER_ADDR,
        0x1000,
    )
}

/// A virtio-rng device in the next virtio-mmio slot.
pub fn attach_virtio_rng(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    platform: &mut Platform,
    subscribers: &mut Subscribers,
) -> Result<(), AttachError> {
    let rng = Arc::new(Mutex::new(
        devices::virtio::rng::Rng::new().map_err(|e| AttachError::CreateDevice("virtio-rng", e))?,
    ));
    attach_virtio(vm, mem, platform, "virtio-rng", rng.clone())?;
    subscribers.add_subscriber(rng);
    Ok(())
}

/// A virtio-net device on the host TAP `net.tap` (opened by name; with `net.transient` created
/// non-persistent when missing and tinyvmm runs as root), in the next virtio-mmio slot.
pub fn attach_net(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    platform: &mut Platform,
    subscribers: &mut Subscribers,
    net: &NetConfig,
) -> Result<(), AttachError> {
    let tap = if net.transient {
        Tap::open_or_create_transient(&net.tap)
    } else {
        Tap::open(&net.tap)
    }
    .map_err(AttachError::OpenTap)?;
    let device = Net::new(tap, net.mac.octets()).map_err(|source| AttachError::CreateNet {
        tap: net.tap.clone(),
        source,
    })?;
    let device = Arc::new(Mutex::new(device));
    platform
        .net_counters
        .push((net.tap.clone(), device_counters(&device)));
    attach_virtio(vm, mem, platform, "virtio-net", device.clone())?;
    subscribers.add_subscriber(device);
    Ok(())
}

/// Starts the VM's virtio-fs server (one process for all `source` shares) and connects every
/// share to its backend; see [`crate::fs_server`].
pub fn spawn_fs_server(
    cfg: &VmConfig,
) -> Result<(Option<FsServer>, Vec<ConnectedShare>), AttachError> {
    crate::fs_server::spawn_fs_server(cfg).map_err(AttachError::SpawnFsServer)
}

/// A virtio-fs device (vhost-user frontend) for one connected share, in the next slot.
pub fn attach_fs(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    platform: &mut Platform,
    subscribers: &mut Subscribers,
    share: ConnectedShare,
) -> Result<(), AttachError> {
    let device =
        Fs::with_stream(&share.tag, share.stream).map_err(|source| AttachError::CreateFs {
            tag: share.tag.clone(),
            source,
        })?;
    let device = Arc::new(Mutex::new(device));
    attach_virtio(vm, mem, platform, "virtio-fs", device.clone())?;
    subscribers.add_subscriber(device);
    Ok(())
}

/// A virtio-blk device on `vol` (volume number `index` of the config), in the next
/// virtio-mmio slot. The image stays locked (flock) for as long as the VMM runs.
pub fn attach_block(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    platform: &mut Platform,
    subscribers: &mut Subscribers,
    (index, vol): (usize, &VolumeConfig),
) -> Result<(), AttachError> {
    let opts = VolumeOptions {
        path: vol.path.clone(),
        read_only: vol.read_only,
        cache: match vol.cache {
            CacheConfig::None => CacheMode::None,
            CacheConfig::Writeback => CacheMode::Writeback,
        },
    };
    let backend =
        Backend::open(&opts).map_err(|source| AttachError::OpenVolume { index, source })?;
    let device = Block::new(backend, vol.serial.as_deref())
        .map_err(|e| AttachError::CreateDevice("virtio-blk", e))?;
    let device = Arc::new(Mutex::new(device));
    attach_virtio(vm, mem, platform, "virtio-blk", device.clone())?;
    subscribers.add_subscriber(device);
    Ok(())
}

fn device_counters(device: &Arc<Mutex<Net>>) -> Arc<NetCounters> {
    device.lock().unwrap_or_else(|e| e.into_inner()).counters()
}

/// Puts `device` behind a virtio-mmio transport in the next free slot, with an ioeventfd per
/// queue and an irqfd for its GSI.
fn attach_virtio(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    platform: &mut Platform,
    name: &'static str,
    device: Arc<Mutex<dyn VirtioDevice>>,
) -> Result<(), AttachError> {
    let slot = platform.virtio.len();
    if slot >= layout::MAX_VIRTIO_DEVICES {
        return Err(AttachError::TooManyVirtioDevices);
    }
    let (addr, gsi) = (layout::virtio_mmio_addr(slot), layout::virtio_gsi(slot));
    let irq: Arc<dyn Interrupt> = irqfd(vm, gsi)?;
    let transport = MmioTransport::new(mem.clone(), device, irq).map_err(|source| {
        AttachError::CreateTransport {
            device: name,
            source,
        }
    })?;
    for (queue, evt) in transport.queue_evts().iter().enumerate() {
        let notify = IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET);
        vm.register_ioevent(evt, &notify, queue as u32)
            .map_err(|source| AttachError::RegisterIoevent {
                device: name,
                queue,
                source,
            })?;
    }
    insert(
        &mut platform.mmio,
        name,
        Arc::new(Mutex::new(transport)),
        addr,
        MMIO_LEN,
    )?;
    platform.virtio.push(VirtioMmioDesc {
        addr,
        len: MMIO_LEN,
        gsi,
    });
    Ok(())
}

/// The kernel command line: the config's (or the default), plus `virtio_mmio.device=` entries
/// when the config asks for command-line discovery.
pub fn kernel_cmdline(cfg: &VmConfig, platform: &Platform) -> String {
    let mut cmdline = cfg.kernel.cmdline.clone();
    if cfg.virtio_mmio_discovery != MmioDiscovery::Acpi {
        for d in &platform.virtio {
            cmdline.push_str(&format!(
                " virtio_mmio.device={}K@{:#x}:{}",
                d.len / 1024,
                d.addr,
                d.gsi
            ));
        }
    }
    cmdline
}

/// The virtio devices ACPI should describe, per the discovery setting.
pub fn acpi_virtio(cfg: &VmConfig, platform: &Platform) -> Vec<VirtioMmioDesc> {
    if cfg.virtio_mmio_discovery == MmioDiscovery::Cmdline {
        Vec::new()
    } else {
        platform.virtio_descs()
    }
}
