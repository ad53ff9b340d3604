//! Reading the kernel, initrd and command line into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::params::Placed;
use super::{BootError, BootProtocol};
use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START, PAGE_SIZE};

/// `xloadflags` bit: the kernel has the 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address.
const STARTUP_64_OFFSET: u64 = 0x200;
/// Setup header version that introduced `pref_address` and `init_size` (2.10).
const BOOT_PROTOCOL_2_10: u16 = 0x020a;

/// A loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub protocol: BootProtocol,
    /// The bzImage setup header, for the zero page.
    pub header: Option<setup_header>,
    /// First byte past everything the kernel may use while it starts (decompression included).
    pub end: u64,
}

/// Loads a bzImage or ELF vmlinux at its preferred address.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: path.to_owned(),
        source,
    })?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .and_then(|_| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|source| BootError::KernelRead {
            path: path.to_owned(),
            source,
        })?;
    let load_error = |source| BootError::KernelLoad {
        path: path.to_owned(),
        source,
    };
    if magic == *b"\x7fELF" {
        let result =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_error)?;
        let (entry, protocol) = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (addr, BootProtocol::Pvh),
            _ => (result.kernel_load, BootProtocol::Linux64),
        };
        return Ok(LoadedKernel {
            entry,
            protocol,
            header: None,
            end: result.kernel_end,
        });
    }
    let result =
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_error)?;
    let header = result.setup_header.unwrap_or_default();
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::KernelNot64Bit {
            path: path.to_owned(),
        });
    }
    let mut end = result.kernel_end;
    if header.version >= BOOT_PROTOCOL_2_10 {
        // The kernel decompresses itself to pref_address and needs init_size bytes there.
        let runtime_end = header
            .pref_address
            .max(result.kernel_load.0)
            .saturating_add(u64::from(header.init_size));
        end = end.max(runtime_end);
    }
    Ok(LoadedKernel {
        entry: result.kernel_load.unchecked_add(STARTUP_64_OFFSET),
        protocol: BootProtocol::Linux64,
        header: Some(header),
        end,
    })
}

/// Loads the initrd as high as possible below the end of low RAM (and below the kernel's
/// `initrd_addr_max`), page-aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<Placed, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::InitrdOpen {
        path: path.to_owned(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::InitrdOpen {
            path: path.to_owned(),
            source,
        })?
        .len();
    let limit = initrd_limit(mem, kernel.header.as_ref());
    let addr = place_initrd(size, kernel.end, limit).ok_or(BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        kernel_end: kernel.end,
        limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::InitrdLoad {
            path: path.to_owned(),
            source,
        })?;
    Ok(Placed {
        addr: GuestAddress(addr),
        size,
    })
}

/// First address past where the initrd may end: the end of the RAM region holding high memory
/// (at most the MMIO gap), lowered to `initrd_addr_max` + 1 when the kernel states one.
fn initrd_limit(mem: &GuestMemoryMmap, header: Option<&setup_header>) -> u64 {
    let low_ram_end = mem
        .find_region(GuestAddress(HIMEM_START))
        .map_or(0, |r| r.last_addr().0.saturating_add(1))
        .min(MMIO_GAP_START);
    match header.map(|h| h.initrd_addr_max) {
        Some(max) if max != 0 => low_ram_end.min(u64::from(max) + 1),
        _ => low_ram_end,
    }
}

/// The page-aligned address of a `size`-byte initrd ending at or below `limit` and starting at
/// or above `floor`, if there is room.
pub fn place_initrd(size: u64, floor: u64, limit: u64) -> Option<u64> {
    let addr = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    let floor = floor.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    (addr >= floor).then_some(addr)
}

/// Writes the NUL-terminated command line at `CMDLINE_START`. `max_len` is the kernel's limit
/// (without the NUL).
pub fn load_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    header: Option<&setup_header>,
) -> Result<Placed, BootError> {
    let max = cmdline_max_len(header);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if let Some(pos) = cmdline.bytes().position(|b| b == 0) {
        return Err(BootError::CmdlineNul(pos));
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::WriteBootParams {
            what: "kernel command line",
            source,
        })?;
    Ok(Placed {
        addr: GuestAddress(CMDLINE_START),
        size: cmdline.len() as u64,
    })
}

fn cmdline_max_len(header: Option<&setup_header>) -> usize {
    let ours = CMDLINE_MAX_SIZE - 1;
    match header.map(|h| h.cmdline_size) {
        Some(size) if size != 0 => ours.min(size as usize),
        _ => ours,
    }
}
