//! Kernel, initrd and command line loading, and the boot parameters the kernel reads.

use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryMmap};

mod e820;
mod kernel;
pub mod params;
#[cfg(test)]
mod tests;

pub use e820::{e820_map, E820Entry, E820_RAM, E820_RESERVED};
pub use kernel::place_initrd;

use crate::layout::{PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START};
use params::BootInfo;
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

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
    #[error("kernel command line contains a NUL byte at offset {0}")]
    CmdlineNul(usize),
    #[error("kernel {path} is a bzImage without a 64-bit entry point (xloadflags bit 0)")]
    KernelNot64Bit { path: PathBuf },
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
    let kernel = kernel::load_kernel(mem, spec.kernel)?;
    let initrd = spec
        .initrd
        .map(|path| kernel::load_initrd(mem, path, &kernel))
        .transpose()?;
    let cmdline = kernel::load_cmdline(mem, spec.cmdline, kernel.header.as_ref())?;
    crate::mptable::setup_mptable(mem, spec.num_cpus).map_err(BootError::Mptable)?;

    let regions: Vec<_> = mem.iter().map(|r| (r.start_addr(), r.len())).collect();
    let e820 = e820_map(&regions);
    let info = BootInfo {
        cmdline,
        initrd,
        rsdp: spec.rsdp,
        e820: &e820,
    };
    let params_addr = match kernel.protocol {
        BootProtocol::Linux64 => write_zero_page(mem, &kernel, &info)?,
        BootProtocol::Pvh => write_pvh_start_info(mem, &info)?,
    };
    log::debug!(
        "kernel {} entry {:#x} ({:?}), params at {:#x}, initrd {:?}",
        spec.kernel.display(),
        kernel.entry.0,
        kernel.protocol,
        params_addr.0,
        initrd
    );
    Ok(BootEntry {
        entry: kernel.entry,
        protocol: kernel.protocol,
        params_addr,
    })
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &kernel::LoadedKernel,
    info: &BootInfo,
) -> Result<GuestAddress, BootError> {
    let zero_page = params::build_boot_params(kernel.header, info)?;
    let addr = GuestAddress(ZERO_PAGE_START);
    mem.write_obj(zero_page, addr)
        .map_err(|source| BootError::WriteBootParams {
            what: "zero page",
            source,
        })?;
    Ok(addr)
}

fn write_pvh_start_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<GuestAddress, BootError> {
    let (start_info, memmap, module) = params::build_pvh_start_info(info)?;
    let write_error = |what| move |source| BootError::WriteBootParams { what, source };
    for (i, entry) in memmap.into_iter().enumerate() {
        let addr = PVH_MEMMAP_START + (i * std::mem::size_of_val(&entry)) as u64;
        mem.write_obj(entry, GuestAddress(addr))
            .map_err(write_error("PVH memory map"))?;
    }
    if let Some(module) = module {
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(write_error("PVH module list"))?;
    }
    let addr = GuestAddress(PVH_INFO_START);
    mem.write_obj(start_info, addr)
        .map_err(write_error("PVH start info"))?;
    Ok(addr)
}
