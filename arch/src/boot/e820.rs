//! The guest's e820 memory map.

use vm_memory::GuestAddress;

use crate::layout::{ACPI_RSDP_ADDR, ACPI_TABLES_END, EBDA_END, HIMEM_START, MPTABLE_START};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One e820 memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl E820Entry {
    fn new(addr: u64, end: u64, kind: u32) -> Self {
        E820Entry {
            addr,
            size: end - addr,
            kind,
        }
    }
}

/// The memory map for RAM `regions` (as from [`crate::memory::ram_regions`], sorted):
/// RAM below the EBDA, the EBDA (MP table) and the BIOS area (ACPI tables) reserved, RAM from
/// 1 MiB on, and every further region as RAM. Parts of the low 1 MiB that are not backed by a
/// region are left out.
pub fn e820_map(regions: &[(GuestAddress, u64)]) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for &(GuestAddress(start), len) in regions {
        let end = start.saturating_add(len);
        if start < HIMEM_START {
            add_low_memory(&mut map, start, end.min(HIMEM_START));
        }
        let high_start = start.max(HIMEM_START);
        if end > high_start {
            map.push(E820Entry::new(high_start, end, E820_RAM));
        }
    }
    map
}

/// Splits `[start, end)` (below 1 MiB) into the RAM and reserved parts of the legacy layout.
fn add_low_memory(map: &mut Vec<E820Entry>, start: u64, end: u64) {
    let parts = [
        (0, MPTABLE_START, E820_RAM),
        (MPTABLE_START, EBDA_END, E820_RESERVED),
        (ACPI_RSDP_ADDR, ACPI_TABLES_END, E820_RESERVED),
    ];
    for (part_start, part_end, kind) in parts {
        let s = part_start.max(start);
        let e = part_end.min(end);
        if s < e {
            map.push(E820Entry::new(s, e, kind));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ram_regions;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn e820_map_when_small_memory_then_low_ram_reserved_areas_and_high_ram() {
        let map = e820_map(&ram_regions(128 * MIB).unwrap());
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9FC00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9FC00,
                    size: 0x400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0xE0000,
                    size: 0x20000,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: MIB,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_map_when_memory_above_gap_then_ram_resumes_at_4g() {
        let map = e820_map(&ram_regions(5 * GIB).unwrap());
        assert_eq!(map.len(), 5);
        assert_eq!(
            map[3],
            E820Entry {
                addr: MIB,
                size: 3 * GIB - MIB,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[4],
            E820Entry {
                addr: 4 * GIB,
                size: 2 * GIB,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn e820_map_when_entries_listed_then_sorted_and_disjoint() {
        let map = e820_map(&ram_regions(4 * GIB).unwrap());
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:x?}");
        }
    }

    #[test]
    fn e820_map_when_memory_under_1m_then_only_backed_parts() {
        let map = e820_map(&[(GuestAddress(0), 0x80000)]);
        assert_eq!(
            map,
            vec![E820Entry {
                addr: 0,
                size: 0x80000,
                kind: E820_RAM
            }]
        );
    }
}
