//! Guest physical address layout (see CONTEXT.md "Guest physical layout").
//!
//! Low memory below 1 MiB holds the boot structures the VMM writes before the first vCPU run;
//! RAM runs from 0 to the 32-bit MMIO gap and resumes at 4 GiB.

/// Start of the 32-bit MMIO hole (3 GiB).
pub const MMIO_GAP_START: u64 = 0xC000_0000;
/// End (exclusive) of the 32-bit MMIO hole (4 GiB); RAM above the gap resumes here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// Firecracker-compatible boot timer (guest writes 123 at offset 0).
pub const BOOT_TIMER_ADDR: u64 = 0xD000_0000;
/// Length of the boot timer MMIO range.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// ACPI Generic Event Device register block.
pub const GED_ADDR: u64 = 0xD000_1000;
/// Length of the GED register block.
pub const GED_SIZE: u64 = 0x1000;
/// First virtio-mmio device; device `i` is at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xD000_2000;
/// MMIO window of one virtio-mmio device.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of virtio-mmio device 0; device `i` uses `VIRTIO_GSI_BASE + i`.
pub const VIRTIO_GSI_BASE: u32 = 10;
/// Virtio-mmio devices that fit in the IOAPIC's 24 pins (GSI 10..=23).
pub const MAX_VIRTIO_DEVICES: usize = 14;
/// GSI of the ACPI GED.
pub const GED_GSI: u32 = 5;
/// GSI of COM1.
pub const SERIAL_GSI: u32 = 4;
/// GSI of the i8042 keyboard controller.
pub const I8042_GSI: u32 = 1;
/// ACPI PM sleep control/status and reset register (one byte).
pub const ACPI_PM_PORT: u16 = 0x3c0;
/// The pvpanic port (QEMU's ISA pvpanic, ACPI `QEMU0001`): the guest writes 1 when its kernel
/// panics.
pub const PVPANIC_PORT: u16 = 0x505;

/// In-kernel IOAPIC.
pub const IOAPIC_ADDR: u64 = 0xFEC0_0000;
/// Number of IOAPIC pins (GSIs 0..=23).
pub const IOAPIC_PINS: u32 = 24;
/// Local APIC of every vCPU.
pub const LAPIC_ADDR: u64 = 0xFEE0_0000;

/// MP table: in the last KiB of base memory (the EBDA), where Linux scans for it.
pub const MPTABLE_START: u64 = 0x9FC00;
/// End (exclusive) of the EBDA area reserved for the MP table.
pub const EBDA_END: u64 = 0xA0000;
/// RSDP; all ACPI tables live in `[ACPI_RSDP_ADDR, ACPI_TABLES_END)`.
pub const ACPI_RSDP_ADDR: u64 = 0xE0000;
/// End (exclusive) of the ACPI table area.
pub const ACPI_TABLES_END: u64 = 0x10_0000;

/// GDT (4 entries).
pub const GDT_ADDR: u64 = 0x500;
/// IDT (one empty entry).
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Maximum number of PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// Linux boot protocol zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity mapping.
pub const PDPTE_START: u64 = 0xa000;
/// First of `BOOT_PD_COUNT` page directories (2 MiB pages), contiguous.
pub const PDE_START: u64 = 0xb000;
/// Page directories: each maps 1 GiB, so the boot mapping identity-maps the first 4 GiB.
pub const BOOT_PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept (x86 COMMAND_LINE_SIZE, including the NUL).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of high memory: kernels load here or above.
pub const HIMEM_START: u64 = 0x10_0000;

/// Largest guest RAM size supported (1 TiB).
pub const MAX_RAM_SIZE: u64 = 1 << 40;
/// Guest page size.
pub const PAGE_SIZE: u64 = 0x1000;

/// MMIO base of virtio-mmio device `index` (`index < MAX_VIRTIO_DEVICES`).
pub fn virtio_mmio_addr(index: usize) -> u64 {
    VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE
}

/// GSI of virtio-mmio device `index` (`index < MAX_VIRTIO_DEVICES`).
pub fn virtio_gsi(index: usize) -> u32 {
    VIRTIO_GSI_BASE + index as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_slots_when_all_used_then_stay_inside_gap_and_ioapic() {
        let last = MAX_VIRTIO_DEVICES - 1;
        assert_eq!(virtio_mmio_addr(0), 0xD000_2000);
        assert_eq!(virtio_mmio_addr(1), 0xD000_3000);
        assert!(virtio_mmio_addr(last) + VIRTIO_MMIO_SIZE <= IOAPIC_ADDR);
        assert_eq!(virtio_gsi(0), 10);
        assert_eq!(virtio_gsi(last), IOAPIC_PINS - 1);
    }

    #[test]
    fn low_boot_structures_when_laid_out_then_do_not_overlap() {
        // (start, length) of everything written below 1 MiB.
        let mut areas = [
            (GDT_ADDR, 4 * 8),
            (IDT_ADDR, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x20),
            (PVH_MEMMAP_START, PVH_MEMMAP_MAX_ENTRIES as u64 * 24),
            (ZERO_PAGE_START, 0x1000),
            (BOOT_STACK_POINTER - 0x100, 0x100),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, BOOT_PD_COUNT * 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, EBDA_END - MPTABLE_START),
            (ACPI_RSDP_ADDR, ACPI_TABLES_END - ACPI_RSDP_ADDR),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?} overlap");
        }
        assert!(areas[areas.len() - 1].0 + areas[areas.len() - 1].1 <= HIMEM_START);
    }
}
