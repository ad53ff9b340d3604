//! Tests of kernel loading and boot parameters with hand-made kernel images.

use std::io::Write;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::params::*;
use super::*;
use crate::layout::*;

const MIB: u64 = 1 << 20;
const MEM_SIZE: u64 = 64 * MIB;
const ELF_LOAD_ADDR: u64 = 0x20_0000;
const PVH_ENTRY: u64 = 0x20_0010;
const PAYLOAD: &[u8] = b"\x90\x90\xf4 kernel payload";

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file
}

/// A minimal bzImage: one setup sector after the boot sector, then the "protected-mode code".
fn bzimage(xloadflags: u16, cmdline_size: u32) -> Vec<u8> {
    let hdr = setup_header {
        setup_sects: 1,
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        version: 0x020f,
        loadflags: 1, // LOADED_HIGH
        code32_start: HIMEM_START as u32,
        initrd_addr_max: 0x7fff_ffff,
        kernel_alignment: 0x20_0000,
        relocatable_kernel: 1,
        xloadflags,
        cmdline_size,
        pref_address: 0x100_0000,
        init_size: 0x40_0000,
        ..Default::default()
    };
    let mut image = vec![0u8; 1024];
    image[0x1f1..0x1f1 + hdr.as_slice().len()].copy_from_slice(hdr.as_slice());
    image.extend_from_slice(PAYLOAD);
    image
}

/// A minimal ELF64 executable with one PT_LOAD at `ELF_LOAD_ADDR`, and with `pvh_note` a
/// PT_NOTE holding a Xen PHYS32_ENTRY note for `PVH_ENTRY`.
fn elf(pvh_note: bool) -> Vec<u8> {
    let phnum: u16 = if pvh_note { 2 } else { 1 };
    let mut image = Vec::new();
    image.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    image.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    image.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    image.extend_from_slice(&1u32.to_le_bytes());
    image.extend_from_slice(&ELF_LOAD_ADDR.to_le_bytes()); // e_entry
    image.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    image.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    image.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, phnum, 0, 0, 0] {
        image.extend_from_slice(&half.to_le_bytes());
    }
    let mut push_phdr = |p_type: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64| {
        image.extend_from_slice(&p_type.to_le_bytes());
        image.extend_from_slice(&5u32.to_le_bytes()); // R+X
        for word in [offset, paddr, paddr, filesz, memsz, 0x1000] {
            image.extend_from_slice(&word.to_le_bytes());
        }
    };
    push_phdr(1, 0x200, ELF_LOAD_ADDR, PAYLOAD.len() as u64, 0x1000);
    if pvh_note {
        push_phdr(4, 0x100, 0, 20, 0);
    }
    image.resize(0x100, 0);
    if pvh_note {
        for word in [4u32, 4, 18] {
            image.extend_from_slice(&word.to_le_bytes());
        }
        image.extend_from_slice(b"Xen\0");
        image.extend_from_slice(&(PVH_ENTRY as u32).to_le_bytes());
    }
    image.resize(0x200, 0);
    image.extend_from_slice(PAYLOAD);
    image
}

fn spec<'a>(kernel: &'a Path, initrd: Option<&'a Path>, cmdline: &'a str) -> BootSpec<'a> {
    BootSpec {
        kernel,
        initrd,
        cmdline,
        num_cpus: 2,
        rsdp: Some(GuestAddress(ACPI_RSDP_ADDR)),
    }
}

fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

#[test]
fn load_and_configure_when_bzimage_then_64bit_entry_and_zero_page_filled() {
    let mem = guest_memory();
    let kernel = temp_file(&bzimage(1, 2047));
    let initrd_bytes = vec![0x5a; 5000];
    let initrd = temp_file(&initrd_bytes);
    let cmdline = "console=ttyS0 reboot=k panic=1";

    let entry =
        load_and_configure(&mem, &spec(kernel.path(), Some(initrd.path()), cmdline)).unwrap();

    assert_eq!(entry.protocol, BootProtocol::Linux64);
    assert_eq!(entry.entry, GuestAddress(HIMEM_START + 0x200));
    assert_eq!(entry.params_addr, GuestAddress(ZERO_PAGE_START));
    assert_eq!(read_bytes(&mem, HIMEM_START, PAYLOAD.len()), PAYLOAD);
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let hdr = params.hdr;
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.header }, HDRS_MAGIC);
    assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
    assert_eq!({ hdr.version }, 0x020f, "the kernel's own header is kept");
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!({ hdr.cmdline_size }, cmdline.len() as u32);
    let mut written = read_bytes(&mem, CMDLINE_START, cmdline.len() + 1);
    assert_eq!(written.pop(), Some(0));
    assert_eq!(written, cmdline.as_bytes());
    assert_eq!({ params.acpi_rsdp_addr }, ACPI_RSDP_ADDR);

    // The initrd sits page-aligned at the top of RAM.
    let (ramdisk, ramdisk_size) = (u64::from(hdr.ramdisk_image), hdr.ramdisk_size);
    assert_eq!(ramdisk_size, 5000);
    assert_eq!(ramdisk % PAGE_SIZE, 0);
    assert!(ramdisk + 5000 <= MEM_SIZE && ramdisk + 5000 + PAGE_SIZE > MEM_SIZE);
    assert_eq!(read_bytes(&mem, ramdisk, 5000), initrd_bytes);

    let e820 = e820_map(&[(GuestAddress(0), MEM_SIZE)]);
    assert_eq!(usize::from(params.e820_entries), e820.len());
    let table = params.e820_table;
    for (got, want) in table.iter().zip(&e820) {
        assert_eq!(
            ({ got.addr }, { got.size }, { got.r#type }),
            (want.addr, want.size, want.kind)
        );
    }
    assert_eq!(read_bytes(&mem, MPTABLE_START, 4), b"_MP_");
}

#[test]
fn load_and_configure_when_bzimage_lacks_64bit_entry_then_error() {
    let mem = guest_memory();
    let kernel = temp_file(&bzimage(0, 2047));
    let err = load_and_configure(&mem, &spec(kernel.path(), None, "")).unwrap_err();
    assert!(matches!(err, BootError::KernelNot64Bit { .. }), "{err}");
}

#[test]
fn load_and_configure_when_cmdline_exceeds_kernel_limit_then_error() {
    let mem = guest_memory();
    let kernel = temp_file(&bzimage(1, 16));
    let err =
        load_and_configure(&mem, &spec(kernel.path(), None, "console=ttyS0 panic=1")).unwrap_err();
    assert!(
        matches!(err, BootError::CmdlineTooLong { len: 21, max: 16 }),
        "{err}"
    );
    let long = "x".repeat(CMDLINE_MAX_SIZE);
    let elf_kernel = temp_file(&elf(false));
    let err = load_and_configure(&mem, &spec(elf_kernel.path(), None, &long)).unwrap_err();
    assert!(matches!(err, BootError::CmdlineTooLong { .. }), "{err}");
}

#[test]
fn load_and_configure_when_elf_without_pvh_note_then_linux64_at_elf_entry() {
    let mem = guest_memory();
    let kernel = temp_file(&elf(false));
    let entry = load_and_configure(&mem, &spec(kernel.path(), None, "quiet")).unwrap();
    assert_eq!(entry.protocol, BootProtocol::Linux64);
    assert_eq!(entry.entry, GuestAddress(ELF_LOAD_ADDR));
    assert_eq!(read_bytes(&mem, ELF_LOAD_ADDR, PAYLOAD.len()), PAYLOAD);
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    assert_eq!({ params.hdr.kernel_alignment }, DEFAULT_KERNEL_ALIGNMENT);
    assert_eq!({ params.hdr.ramdisk_image }, 0);
}

#[test]
fn load_and_configure_when_elf_with_pvh_note_then_pvh_start_info_written() {
    let mem = guest_memory();
    let kernel = temp_file(&elf(true));
    let initrd = temp_file(&[7u8; 100]);
    let entry =
        load_and_configure(&mem, &spec(kernel.path(), Some(initrd.path()), "quiet")).unwrap();
    assert_eq!(entry.protocol, BootProtocol::Pvh);
    assert_eq!(entry.entry, GuestAddress(PVH_ENTRY));
    assert_eq!(entry.params_addr, GuestAddress(PVH_INFO_START));

    let info: hvm_start_info = mem.read_obj(entry.params_addr).unwrap();
    assert_eq!(info.magic, XEN_HVM_START_MAGIC);
    assert_eq!(info.version, 1);
    assert_eq!(info.cmdline_paddr, CMDLINE_START);
    assert_eq!(info.rsdp_paddr, ACPI_RSDP_ADDR);
    assert_eq!(info.nr_modules, 1);
    let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!(module.size, 100);
    assert_eq!(read_bytes(&mem, module.paddr, 100), vec![7u8; 100]);

    let e820 = e820_map(&[(GuestAddress(0), MEM_SIZE)]);
    assert_eq!(info.memmap_entries as usize, e820.len());
    for (i, want) in e820.iter().enumerate() {
        let addr = info.memmap_paddr + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        let got: hvm_memmap_table_entry = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(
            (got.addr, got.size, got.type_),
            (want.addr, want.size, want.kind)
        );
    }
}

#[test]
fn load_and_configure_when_initrd_too_large_then_error_names_file() {
    let mem = guest_memory();
    let kernel = temp_file(&elf(false));
    let initrd = temp_file(&vec![0u8; (MEM_SIZE - 2 * MIB) as usize]);
    let err = load_and_configure(&mem, &spec(kernel.path(), Some(initrd.path()), "")).unwrap_err();
    assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(&initrd.path().display().to_string()));
}

#[test]
fn load_and_configure_when_kernel_missing_or_garbage_then_named_errors() {
    let mem = guest_memory();
    let missing = Path::new("/nonexistent/vmlinux");
    let err = load_and_configure(&mem, &spec(missing, None, "")).unwrap_err();
    assert!(matches!(err, BootError::KernelOpen { .. }));
    assert!(err.to_string().contains("/nonexistent/vmlinux"));
    let garbage = temp_file(&[0xffu8; 4096]);
    let err = load_and_configure(&mem, &spec(garbage.path(), None, "")).unwrap_err();
    assert!(matches!(err, BootError::KernelLoad { .. }), "{err}");
    let tiny = temp_file(b"ab");
    let err = load_and_configure(&mem, &spec(tiny.path(), None, "")).unwrap_err();
    assert!(matches!(err, BootError::KernelRead { .. }), "{err}");
}

#[test]
fn load_and_configure_when_cmdline_has_nul_then_error() {
    let mem = guest_memory();
    let kernel = temp_file(&elf(false));
    let err = load_and_configure(&mem, &spec(kernel.path(), None, "a\0b")).unwrap_err();
    assert!(matches!(err, BootError::CmdlineNul(1)), "{err}");
}

#[test]
fn place_initrd_when_room_then_highest_aligned_else_none() {
    assert_eq!(place_initrd(0x1800, 0x10_0000, 0x40_0000), Some(0x3f_e000));
    assert_eq!(place_initrd(0x30_0000, 0x10_0001, 0x40_0000), None);
    assert_eq!(
        place_initrd(0x2f_f000, 0x10_0001, 0x40_0000),
        Some(0x10_1000)
    );
    assert_eq!(place_initrd(0x50_0000, 0, 0x40_0000), None);
}

#[test]
fn build_boot_params_when_addresses_above_4g_then_ext_fields_hold_high_bits() {
    let e820 = [E820Entry {
        addr: 0,
        size: 0x1000,
        kind: E820_RAM,
    }];
    let info = BootInfo {
        cmdline: Placed {
            addr: GuestAddress(0x1_2000_0000),
            size: 10,
        },
        initrd: Some(Placed {
            addr: GuestAddress(0x2_0000_1000),
            size: 0x1_0000_0002,
        }),
        rsdp: None,
        e820: &e820,
    };
    let params = build_boot_params(None, &info).unwrap();
    assert_eq!(
        ({ params.hdr.cmd_line_ptr }, { params.ext_cmd_line_ptr }),
        (0x2000_0000, 1)
    );
    assert_eq!(
        ({ params.hdr.ramdisk_image }, { params.ext_ramdisk_image }),
        (0x1000, 2)
    );
    assert_eq!(
        ({ params.hdr.ramdisk_size }, { params.ext_ramdisk_size }),
        (2, 1)
    );
    assert_eq!({ params.acpi_rsdp_addr }, 0);
}

#[test]
fn build_params_when_too_many_e820_entries_then_error() {
    let e820 = vec![
        E820Entry {
            addr: 0,
            size: 0x1000,
            kind: E820_RAM
        };
        ZERO_PAGE_E820_MAX + 1
    ];
    let info = BootInfo {
        cmdline: Placed {
            addr: GuestAddress(CMDLINE_START),
            size: 0,
        },
        initrd: None,
        rsdp: None,
        e820: &e820,
    };
    assert!(matches!(
        build_boot_params(None, &info),
        Err(BootError::TooManyMemoryRegions(129))
    ));
    let e820 = vec![e820[0]; PVH_MEMMAP_MAX_ENTRIES + 1];
    let info = BootInfo {
        e820: &e820,
        ..info
    };
    assert!(matches!(
        build_pvh_start_info(&info),
        Err(BootError::TooManyMemoryRegions(_))
    ));
}
