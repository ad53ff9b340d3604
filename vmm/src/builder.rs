//! Builds a VM from a validated config, as a sequence of named steps.
//!
//! Order matters: guest memory is registered before the irqchip exists (creating the irqchip
//! first makes each memory registration slow on some hosts), devices are attached before the
//! ACPI tables that describe them are written, and the kernel is loaded last so the boot
//! parameters can point at the tables.

use std::sync::{Arc, Mutex};

use arch::boot::{BootEntry, BootSpec};
use devices::exit::ExitRequest;
use event_manager::{EventManager, MutEventSubscriber};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmconfig::VmConfig;

use crate::attach::{self, AttachError, Platform};
use crate::timing::{Milestone, Timing};
use crate::vcpu::Vcpu;

/// The event manager every device and the control loop register with.
pub type Subscribers = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Errors building the VM, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("open /dev/kvm (does this user have access, and is KVM enabled?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    #[error("create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("create guest memory of {mib} MiB")]
    CreateMemory {
        mib: u64,
        #[source]
        source: arch::memory::MemoryError,
    },
    #[error("register guest memory region {slot} with KVM")]
    RegisterMemory {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("create the in-kernel interrupt controller")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    #[error("create the in-kernel PIT")]
    CreatePit(#[source] kvm_ioctls::Error),
    #[error("create the event manager")]
    CreateEventManager(#[source] event_manager::Error),
    #[error("create the exit request event")]
    CreateExitEvent(#[source] std::io::Error),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("write the ACPI tables")]
    WriteAcpiTables(#[source] arch::acpi::AcpiError),
    #[error("load the kernel {path}")]
    LoadKernel {
        path: String,
        #[source]
        source: arch::boot::BootError,
    },
    #[error("query the CPUID KVM supports")]
    GetSupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("create vCPU {id}")]
    CreateVcpu {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("configure vCPU {id}")]
    ConfigureVcpu {
        id: u8,
        #[source]
        source: arch::vcpu::VcpuSetupError,
    },
}

/// A built VM: everything created, no vCPU running yet.
pub struct Machine {
    pub(crate) _kvm: Kvm,
    pub(crate) _vm: VmFd,
    pub(crate) _mem: GuestMemoryMmap,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) subscribers: Subscribers,
    pub(crate) platform: Platform,
    pub(crate) exit: Arc<ExitRequest>,
    /// The guest's kernel uses the ACPI tables (no `acpi=off`): SIGTERM presses the power
    /// button, else it sends Ctrl-Alt-Del.
    pub(crate) guest_acpi: bool,
    /// Last, so the devices' backend connections close before the server is killed.
    pub(crate) _fs_server: Option<crate::fs_server::FsServer>,
}

/// Builds the VM described by `cfg`.
pub fn build(cfg: &VmConfig, timing: Timing) -> Result<Machine, BuildError> {
    let kvm = open_kvm()?;
    let vm = create_vm(&kvm)?;
    timing.mark(Milestone::VmCreated);

    let mem = create_guest_memory(cfg)?;
    register_guest_memory(&vm, &mem)?;
    timing.mark(Milestone::MemoryReady);

    create_interrupt_controllers(&vm, cfg.pit)?;
    let exit = Arc::new(ExitRequest::new().map_err(BuildError::CreateExitEvent)?);
    let mut subscribers = Subscribers::new().map_err(BuildError::CreateEventManager)?;
    let mut platform = Platform::new(exit.clone());

    attach::attach_serial(&vm, &mut platform, &mut subscribers, cfg)?;
    attach::attach_i8042(&vm, &mut platform)?;
    attach::attach_cmos(&mut platform)?;
    attach::attach_acpi_pm(&mut platform)?;
    attach::attach_pvpanic(&mut platform)?;
    attach::attach_ged(&vm, &mut platform)?;
    // Under systemd (`Type=notify`) the boot timer is the readiness signal, so it is there
    // even when the config does not ask for timing lines.
    if cfg.boot_timer || crate::notify::enabled() {
        attach::attach_boot_timer(&mut platform, timing)?;
    }
    if cfg.rng {
        attach::attach_virtio_rng(&vm, &mem, &mut platform, &mut subscribers)?;
    }
    for net in &cfg.network {
        attach::attach_net(&vm, &mem, &mut platform, &mut subscribers, net)?;
    }
    for volume in cfg.volumes.iter().enumerate() {
        attach::attach_block(&vm, &mem, &mut platform, &mut subscribers, volume)?;
    }
    // On this (main) thread: the server's parent-death signal is tied to the forking thread.
    let (fs_server, shares) = attach::spawn_fs_server(cfg)?;
    for share in shares {
        attach::attach_fs(&vm, &mem, &mut platform, &mut subscribers, share)?;
    }

    let rsdp = write_acpi_tables(&mem, cfg, &platform)?;
    let cmdline = attach::kernel_cmdline(cfg, &platform);
    let entry = load_kernel(&mem, cfg, &cmdline, rsdp)?;
    timing.mark(Milestone::KernelLoaded);

    let setup = VcpuSetup {
        mem: &mem,
        entry: &entry,
        exit: &exit,
        timing,
    };
    let vcpus = create_vcpus(&kvm, &vm, num_cpus(cfg), &setup, &mut platform)?;
    let guest_acpi = !crate::control::cmdline_disables_acpi(&cmdline);
    Ok(Machine {
        _kvm: kvm,
        _vm: vm,
        _mem: mem,
        vcpus,
        subscribers,
        platform,
        exit,
        guest_acpi,
        _fs_server: fs_server,
    })
}

/// The vCPU count as the arch code takes it; validation caps it at 32.
fn num_cpus(cfg: &VmConfig) -> u8 {
    u8::try_from(cfg.vcpus).unwrap_or(u8::MAX)
}

fn open_kvm() -> Result<Kvm, BuildError> {
    let kvm = Kvm::new().map_err(BuildError::OpenKvm)?;
    let required = [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ];
    for (cap, name) in required {
        if !kvm.check_extension(cap) {
            return Err(BuildError::MissingCapability(name));
        }
    }
    Ok(kvm)
}

fn create_vm(kvm: &Kvm) -> Result<VmFd, BuildError> {
    kvm.create_vm().map_err(BuildError::CreateVm)
}

fn create_guest_memory(cfg: &VmConfig) -> Result<GuestMemoryMmap, BuildError> {
    arch::memory::create_guest_memory(cfg.memory_mib << 20, cfg.hugepages).map_err(|source| {
        BuildError::CreateMemory {
            mib: cfg.memory_mib,
            source,
        }
    })
}

fn register_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), BuildError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let region_desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the Machine keeps alive for
        // as long as the VM exists; the slot numbers are unique.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|source| BuildError::RegisterMemory { slot, source })?;
    }
    Ok(())
}

fn create_interrupt_controllers(vm: &VmFd, with_pit: bool) -> Result<(), BuildError> {
    vm.create_irq_chip().map_err(BuildError::CreateIrqchip)?;
    if !with_pit {
        return Ok(());
    }
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(BuildError::CreatePit)
}

fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    platform: &Platform,
) -> Result<vm_memory::GuestAddress, BuildError> {
    let virtio = attach::acpi_virtio(cfg, platform);
    let acpi = arch::acpi::AcpiConfig {
        num_cpus: num_cpus(cfg),
        virtio_mmio: &virtio,
        serial: true,
    };
    arch::acpi::create_acpi_tables(mem, &acpi).map_err(BuildError::WriteAcpiTables)
}

fn load_kernel(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    cmdline: &str,
    rsdp: vm_memory::GuestAddress,
) -> Result<BootEntry, BuildError> {
    let spec = BootSpec {
        kernel: &cfg.kernel.path,
        initrd: cfg.kernel.initrd.as_deref(),
        cmdline,
        num_cpus: num_cpus(cfg),
        rsdp: Some(rsdp),
    };
    arch::boot::load_and_configure(mem, &spec).map_err(|source| BuildError::LoadKernel {
        path: cfg.kernel.path.display().to_string(),
        source,
    })
}

/// What every vCPU is created from.
struct VcpuSetup<'a> {
    mem: &'a GuestMemoryMmap,
    entry: &'a BootEntry,
    exit: &'a Arc<ExitRequest>,
    timing: Timing,
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    num_cpus: u8,
    setup: &VcpuSetup,
    platform: &mut Platform,
) -> Result<Vec<Vcpu>, BuildError> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::GetSupportedCpuid)?;
    let (pio, mmio) = platform.buses();
    (0..num_cpus)
        .map(|id| {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|source| BuildError::CreateVcpu { id, source })?;
            arch::vcpu::configure_vcpu(&fd, &supported, setup.mem, setup.entry, id, num_cpus)
                .map_err(|source| BuildError::ConfigureVcpu { id, source })?;
            Ok(Vcpu {
                id,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                exit: setup.exit.clone(),
                timing: setup.timing,
            })
        })
        .collect()
}
