//! Boot-vCPU register state: GDT, segments, identity page tables, and the special and general
//! registers for the 64-bit Linux and PVH entry protocols.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::boot::{BootEntry, BootProtocol};
use crate::layout::{
    BOOT_PD_COUNT, BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PDE_START, PDPTE_START, PML4_START,
};

/// GDT selectors (index * 8).
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

const PAGE_PRESENT: u64 = 1 << 0;
const PAGE_WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;
const HUGE_PAGE_SIZE: u64 = 2 << 20;
const ENTRIES_PER_TABLE: u64 = 512;

/// A GDT descriptor from its access byte (P, DPL, S, type), flags nibble (G, D/B, L, AVL),
/// base and 20-bit limit.
pub const fn gdt_entry(access: u8, flags: u8, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | (((flags as u64) & 0xf) << 52)
        | ((limit & 0x000f_0000) << 32)
        | ((access as u64) << 40)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The four-entry GDT for `protocol`: null, code, data, TSS.
pub fn gdt(protocol: BootProtocol) -> [u64; 4] {
    let code_flags = match protocol {
        BootProtocol::Linux64 => 0xa, // G, L
        BootProtocol::Pvh => 0xc,     // G, D/B (32-bit)
    };
    [
        0,
        gdt_entry(0x9b, code_flags, 0, 0xfffff), // present, ring 0, code, execute/read, accessed
        gdt_entry(0x93, 0xc, 0, 0xfffff),        // present, ring 0, data, read/write, accessed
        gdt_entry(0x8b, 0x0, 0, 0x67),           // present, busy 32/64-bit TSS
    ]
}

/// The KVM segment register a GDT descriptor loads as `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let flags = ((entry >> 52) & 0xf) as u8;
    let access = ((entry >> 40) & 0xff) as u8;
    let granular = flags & 0x8 != 0;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let present = access >> 7;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: access & 0xf,
        present,
        dpl: (access >> 5) & 0x3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g: flags >> 3,
        avl: flags & 1,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT and an empty IDT for `protocol`.
pub fn write_gdt_and_idt(
    mem: &GuestMemoryMmap,
    protocol: BootProtocol,
) -> Result<(), GuestMemoryError> {
    for (i, entry) in gdt(protocol).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
}

/// Identity-maps the first 4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..4] -> four page
/// directories.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    let table = PAGE_PRESENT | PAGE_WRITABLE;
    mem.write_obj(PDPTE_START | table, GuestAddress(PML4_START))?;
    for pd in 0..BOOT_PD_COUNT {
        let pd_addr = PDE_START + pd * 0x1000;
        mem.write_obj(pd_addr | table, GuestAddress(PDPTE_START + pd * 8))?;
        let entries: Vec<u8> = (0..ENTRIES_PER_TABLE)
            .flat_map(|i| {
                let frame = (pd * ENTRIES_PER_TABLE + i) * HUGE_PAGE_SIZE;
                (frame | table | PAGE_SIZE_2M).to_le_bytes()
            })
            .collect();
        mem.write_slice(&entries, GuestAddress(pd_addr))?;
    }
    Ok(())
}

/// `sregs` (as read from the vCPU) adjusted for entry under `protocol`.
pub fn boot_sregs(mut sregs: kvm_sregs, protocol: BootProtocol) -> kvm_sregs {
    let gdt = gdt(protocol);
    let code = segment_from_gdt(gdt[1], CODE_SELECTOR);
    let data = segment_from_gdt(gdt[2], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], TSS_SELECTOR);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    match protocol {
        BootProtocol::Linux64 => {
            // Caches on (CD and NW clear, unlike after reset), protected mode, paging.
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers for entry at `entry`.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.entry.0,
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = entry.params_addr.0;
        }
        BootProtocol::Pvh => regs.rbx = entry.params_addr.0,
    }
    regs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entry_when_known_descriptors_then_canonical_encoding() {
        assert_eq!(gdt_entry(0x9b, 0xa, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x93, 0xc, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x9b, 0xc, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x8b, 0x0, 0, 0x67), 0x0000_8b00_0000_0067);
        assert_eq!(
            gdt_entry(0x93, 0x4, 0x1234_5678, 0xabcde),
            0x124a_9334_5678_bcde
        );
    }

    #[test]
    fn segment_from_gdt_when_64bit_code_then_long_mode_flat_segment() {
        let seg = segment_from_gdt(gdt(BootProtocol::Linux64)[1], CODE_SELECTOR);
        assert_eq!((seg.base, seg.limit, seg.selector), (0, 0xffff_ffff, 0x08));
        assert_eq!((seg.type_, seg.present, seg.dpl, seg.s), (0xb, 1, 0, 1));
        assert_eq!((seg.l, seg.db, seg.g, seg.unusable), (1, 0, 1, 0));
    }

    #[test]
    fn segment_from_gdt_when_pvh_code_then_32bit_flat_segment() {
        let seg = segment_from_gdt(gdt(BootProtocol::Pvh)[1], CODE_SELECTOR);
        assert_eq!(
            (seg.base, seg.limit, seg.l, seg.db, seg.g),
            (0, 0xffff_ffff, 0, 1, 1)
        );
    }

    #[test]
    fn segment_from_gdt_when_base_and_byte_limit_then_decoded() {
        let seg = segment_from_gdt(gdt_entry(0x8b, 0, 0x1234_5678, 0x67), TSS_SELECTOR);
        assert_eq!(
            (seg.base, seg.limit, seg.type_, seg.s, seg.g),
            (0x1234_5678, 0x67, 0xb, 0, 0)
        );
        let null = segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn write_identity_page_tables_when_written_then_first_4g_identity_mapped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        // Walk a few addresses the way the MMU would.
        for vaddr in [
            0u64,
            0x10_0000,
            0x1234_5678,
            0xbfff_ffff,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            let pml4e: u64 = mem
                .read_obj(GuestAddress(PML4_START + ((vaddr >> 39) & 0x1ff) * 8))
                .unwrap();
            let pdpte: u64 = mem
                .read_obj(GuestAddress((pml4e & !0xfff) + ((vaddr >> 30) & 0x1ff) * 8))
                .unwrap();
            assert_eq!(pdpte & 3, 3);
            let pde: u64 = mem
                .read_obj(GuestAddress((pdpte & !0xfff) + ((vaddr >> 21) & 0x1ff) * 8))
                .unwrap();
            assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB page");
            let paddr = (pde & !0x1f_ffff & !0xfff) | (vaddr & 0x1f_ffff);
            assert_eq!(paddr, vaddr);
        }
        let pdpte4: u64 = mem.read_obj(GuestAddress(PDPTE_START + 4 * 8)).unwrap();
        assert_eq!(pdpte4, 0, "nothing above 4 GiB");
    }

    #[test]
    fn boot_sregs_when_linux64_then_long_mode_paging() {
        let reset = kvm_sregs {
            cr0: 0x6000_0010, // CD | NW | ET
            ..Default::default()
        };
        let sregs = boot_sregs(reset, BootProtocol::Linux64);
        assert_eq!(sregs.cr0, CR0_PE | CR0_ET | CR0_PG);
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (sregs.cs.l, sregs.cs.selector, sregs.ss.selector),
            (1, 8, 0x10)
        );
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (GDT_ADDR, 31));
        assert_eq!(sregs.tr.selector, TSS_SELECTOR);
    }

    #[test]
    fn boot_sregs_when_pvh_then_protected_mode_without_paging() {
        let start = kvm_sregs {
            cr0: 0x6000_0010, // CD | NW | ET, as after reset
            efer: EFER_LME,
            ..Default::default()
        };
        let sregs = boot_sregs(start, BootProtocol::Pvh);
        assert_eq!(sregs.cr0, CR0_PE | CR0_ET);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!((sregs.cs.db, sregs.cs.l, sregs.ds.db), (1, 0, 1));
    }

    #[test]
    fn boot_regs_when_protocols_then_params_in_rsi_or_rbx() {
        let mut entry = BootEntry {
            entry: GuestAddress(0x100_0000),
            protocol: BootProtocol::Linux64,
            params_addr: GuestAddress(0x7000),
        };
        let regs = boot_regs(&entry);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp, regs.rbp),
            (0x100_0000, 0x7000, 0x8ff0, 0x8ff0)
        );
        assert_eq!(regs.rflags, 2);
        entry.protocol = BootProtocol::Pvh;
        entry.params_addr = GuestAddress(0x6000);
        let regs = boot_regs(&entry);
        assert_eq!((regs.rip, regs.rbx, regs.rsi), (0x100_0000, 0x6000, 0));
    }
}
