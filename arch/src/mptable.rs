//! Intel MultiProcessor Specification 1.4 tables: a floating pointer and a configuration table
//! in the EBDA, describing the vCPUs, one ISA bus, the IOAPIC and its 24 interrupt pins. Linux
//! uses them when there are no ACPI tables (or `acpi=off`).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{EBDA_END, IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR, MPTABLE_START};

const SPEC_REV: u8 = 4;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
/// Family 6, model 1, stepping 1.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4) | 1;
/// FPU and APIC present.
const CPU_FEATURES: u32 = 1 | (1 << 9);

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode "conforms to the bus" (ISA: edge, active high).
const INT_FLAGS_CONFORM: u16 = 0;
const ISA_BUS_ID: u8 = 0;
const ALL_LAPICS: u8 = 0xff;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in the MP table (max {1})")]
    TooManyCpus(u8, u8),
    #[error("the MP table needs at least one vCPU")]
    NoCpus,
    #[error("writing the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The largest vCPU count whose MP table fits between `MPTABLE_START` and the end of the EBDA.
pub fn max_cpus() -> u8 {
    let fixed = FLOATING_POINTER_LEN + HEADER_LEN + fixed_entries_len();
    let room = (EBDA_END - MPTABLE_START) as usize - fixed;
    (room / PROCESSOR_ENTRY_LEN).min(u8::MAX as usize) as u8
}

fn fixed_entries_len() -> usize {
    // Bus, IOAPIC, one I/O interrupt per pin, two local interrupts.
    SMALL_ENTRY_LEN * (2 + IOAPIC_PINS as usize + 2)
}

/// Writes the MP floating pointer and configuration table into the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let table = build_mptable(num_cpus, MPTABLE_START)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

/// The floating pointer followed by the configuration table, for loading at `base`.
fn build_mptable(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > max_cpus() {
        return Err(MptableError::TooManyCpus(num_cpus, max_cpus()));
    }
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    for pin in 0..IOAPIC_PINS as u8 {
        push_interrupt(
            &mut entries,
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            pin,
            ioapic_id,
            pin,
        );
    }
    push_interrupt(
        &mut entries,
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        ALL_LAPICS,
        0,
    );
    push_interrupt(
        &mut entries,
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        ALL_LAPICS,
        1,
    );
    let entry_count = u16::from(num_cpus) + 2 + IOAPIC_PINS as u16 + 2;

    let table_addr = base + FLOATING_POINTER_LEN as u64;
    let mut table = Vec::with_capacity(FLOATING_POINTER_LEN + HEADER_LEN + entries.len());
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&(table_addr as u32).to_le_bytes());
    table.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    table[10] = checksum(&table);

    let header_start = table.len();
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]);
    table.extend_from_slice(b"TINYVMM ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[header_start + 7] = checksum(&table[header_start..]);
    Ok(table)
}

fn push_interrupt(out: &mut Vec<u8>, kind: u8, int_type: u8, src_irq: u8, dst_id: u8, dst_pin: u8) {
    out.extend_from_slice(&[kind, int_type]);
    out.extend_from_slice(&INT_FLAGS_CONFORM.to_le_bytes());
    out.extend_from_slice(&[ISA_BUS_ID, src_irq, dst_id, dst_pin]);
}

/// The byte that makes `bytes` (with it as 0) sum to zero mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// Reads the table back from guest memory the way a guest would.
    fn read_back(num_cpus: u8) -> (Vec<u8>, Vec<u8>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_mptable(&mem, num_cpus).unwrap();
        let mut fp = vec![0u8; FLOATING_POINTER_LEN];
        mem.read_slice(&mut fp, GuestAddress(MPTABLE_START))
            .unwrap();
        let table_addr = u64::from(u32_at(&fp, 4));
        let mut header = vec![0u8; HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(table_addr))
            .unwrap();
        let mut table = vec![0u8; usize::from(u16_at(&header, 4))];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        (fp, table)
    }

    #[test]
    fn setup_mptable_when_written_then_signatures_and_checksums_valid() {
        let (fp, table) = read_back(4);
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(fp[8], 1, "length in 16-byte units");
        assert_eq!(fp[9], SPEC_REV);
        assert_eq!(sum(&fp), 0);
        assert_eq!(&table[0..4], b"PCMP");
        assert_eq!(sum(&table), 0);
        assert_eq!(u32_at(&table, 36), LAPIC_ADDR as u32);
        assert!(MPTABLE_START + (fp.len() + table.len()) as u64 <= EBDA_END);
    }

    #[test]
    fn setup_mptable_when_three_cpus_then_three_processor_entries_first_is_bsp() {
        let (_, table) = read_back(3);
        let entry_count = u16_at(&table, 34);
        assert_eq!(entry_count, 3 + 1 + 1 + 24 + 2);
        let mut off = HEADER_LEN;
        let mut cpus = Vec::new();
        let (mut buses, mut ioapics, mut io_ints, mut local_ints) = (0, 0, 0, 0);
        for _ in 0..entry_count {
            match table[off] {
                ENTRY_PROCESSOR => {
                    cpus.push((table[off + 1], table[off + 3]));
                    off += PROCESSOR_ENTRY_LEN;
                    continue;
                }
                ENTRY_BUS => {
                    assert_eq!(&table[off + 2..off + 8], b"ISA   ");
                    buses += 1;
                }
                ENTRY_IOAPIC => {
                    assert_eq!(table[off + 1], 3, "IOAPIC id follows the CPU ids");
                    assert_eq!(u32_at(&table, off + 4), IOAPIC_ADDR as u32);
                    ioapics += 1;
                }
                ENTRY_IO_INTERRUPT => {
                    assert_eq!(table[off + 5], table[off + 7], "ISA IRQ n -> pin n");
                    io_ints += 1;
                }
                ENTRY_LOCAL_INTERRUPT => local_ints += 1,
                other => panic!("unknown entry type {other}"),
            }
            off += SMALL_ENTRY_LEN;
        }
        assert_eq!(off, table.len());
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1)]);
        assert_eq!((buses, ioapics, io_ints, local_ints), (1, 1, 24, 2));
    }

    #[test]
    fn setup_mptable_when_max_cpus_then_fits_and_one_more_fails() {
        let max = max_cpus();
        assert!(max >= 32, "the config allows 32 vCPUs, MP table fits {max}");
        let (_, table) = read_back(max);
        assert_eq!(sum(&table), 0);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, max + 1),
            Err(MptableError::TooManyCpus(_, _))
        ));
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoCpus)));
    }

    #[test]
    fn setup_mptable_when_memory_too_small_then_write_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert!(matches!(
            setup_mptable(&mem, 1),
            Err(MptableError::Write(_))
        ));
    }

    #[test]
    fn setup_mptable_when_written_then_pointer_in_linux_scan_window_and_virtio_pins_routed() {
        let (fp, table) = read_back(2);
        // Linux scans [0, 1 KiB), the last KiB of 640 KiB base memory, and 0xf0000..0x100000.
        let last_base_kib = 639 * 0x400..640 * 0x400;
        assert!(last_base_kib.contains(&MPTABLE_START));
        assert_eq!(
            MPTABLE_START % 16,
            0,
            "the pointer is found on 16-byte boundaries"
        );
        assert_eq!(u32_at(&fp, 4), (MPTABLE_START + 16) as u32);
        assert_eq!(
            fp[11], 0,
            "feature byte 1: a table follows, no default config"
        );
        // Every IOAPIC pin, including the virtio GSIs 10..=23, has an I/O interrupt entry.
        let entries = &table[HEADER_LEN + 2 * PROCESSOR_ENTRY_LEN..];
        let pins: Vec<u8> = entries
            .chunks(SMALL_ENTRY_LEN)
            .filter(|e| e[0] == ENTRY_IO_INTERRUPT && e[1] == INT_TYPE_INT)
            .map(|e| e[7])
            .collect();
        assert_eq!(pins, (0..24).collect::<Vec<u8>>());
        // The boot CPU (APIC id 0, what KVM gives vCPU 0) carries the BSP flag.
        assert_eq!(table[HEADER_LEN], ENTRY_PROCESSOR);
        assert_eq!(table[HEADER_LEN + 1], 0);
        assert_eq!(table[HEADER_LEN + 3], CPU_ENABLED | CPU_BOOT_PROCESSOR);
    }
}
