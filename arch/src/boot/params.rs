//! Pure builders for what the kernel reads at entry: the Linux zero page (`boot_params`) and the
//! PVH `hvm_start_info` with its memory map and module list.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::e820::E820Entry;
use super::BootError;
use crate::layout::{PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START};

/// `boot_flag` magic of the setup header.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS": setup header magic.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Kernel alignment assumed when there is no setup header (ELF vmlinux).
pub const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 of `hvm_start_info` has the memory map fields.
pub const XEN_HVM_START_VERSION: u32 = 1;
/// Maximum number of e820 entries in the zero page.
pub const ZERO_PAGE_E820_MAX: usize = 128;

/// A blob the kernel finds in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub addr: GuestAddress,
    pub size: u64,
}

/// The inputs both boot protocols describe to the kernel.
#[derive(Debug, Clone)]
pub struct BootInfo<'a> {
    /// Command line (its size excludes the NUL).
    pub cmdline: Placed,
    pub initrd: Option<Placed>,
    pub rsdp: Option<GuestAddress>,
    pub e820: &'a [E820Entry],
}

/// The zero page for the 64-bit Linux boot protocol, starting from the kernel's own setup
/// header (bzImage) or a blank one (ELF vmlinux).
pub fn build_boot_params(
    header: Option<setup_header>,
    info: &BootInfo,
) -> Result<boot_params, BootError> {
    if info.e820.len() > ZERO_PAGE_E820_MAX {
        return Err(BootError::TooManyMemoryRegions(info.e820.len()));
    }
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    let (cmd_lo, cmd_hi) = split_u64(info.cmdline.addr.0);
    params.hdr.cmd_line_ptr = cmd_lo;
    params.ext_cmd_line_ptr = cmd_hi;
    params.hdr.cmdline_size = info.cmdline.size as u32;
    if let Some(initrd) = info.initrd {
        let (addr_lo, addr_hi) = split_u64(initrd.addr.0);
        let (size_lo, size_hi) = split_u64(initrd.size);
        params.hdr.ramdisk_image = addr_lo;
        params.ext_ramdisk_image = addr_hi;
        params.hdr.ramdisk_size = size_lo;
        params.ext_ramdisk_size = size_hi;
    }
    params.acpi_rsdp_addr = info.rsdp.map_or(0, |a| a.0);
    for (slot, entry) in params.e820_table.iter_mut().zip(info.e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = info.e820.len() as u8;
    Ok(params)
}

/// `hvm_start_info`, its memory map and (with an initrd) its one-entry module list, for the
/// addresses in [`crate::layout`].
pub fn build_pvh_start_info(
    info: &BootInfo,
) -> Result<
    (
        hvm_start_info,
        Vec<hvm_memmap_table_entry>,
        Option<hvm_modlist_entry>,
    ),
    BootError,
> {
    if info.e820.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyMemoryRegions(info.e820.len()));
    }
    let memmap: Vec<_> = info
        .e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let module = info.initrd.map(|initrd| hvm_modlist_entry {
        paddr: initrd.addr.0,
        size: initrd.size,
        cmdline_paddr: 0,
        reserved: 0,
    });
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: XEN_HVM_START_VERSION,
        flags: 0,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: info.cmdline.addr.0,
        rsdp_paddr: info.rsdp.map_or(0, |a| a.0),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    Ok((start_info, memmap, module))
}

fn split_u64(value: u64) -> (u32, u32) {
    (value as u32, (value >> 32) as u32)
}
