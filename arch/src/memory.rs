//! Guest RAM: one memfd (so vhost-user back-ends can map it), split around the MMIO gap.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::layout::{MAX_RAM_SIZE, MMIO_GAP_END, MMIO_GAP_START, PAGE_SIZE};

/// Size of the huge pages we ask for.
pub const HUGEPAGE_SIZE: u64 = 2 << 20;

/// Errors while sizing or creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size is 0")]
    ZeroSize,
    #[error("guest memory size {0:#x} is not a multiple of the {1:#x}-byte page size")]
    Unaligned(u64, u64),
    #[error("guest memory size {0:#x} exceeds the maximum of {MAX_RAM_SIZE:#x} bytes")]
    TooLarge(u64),
    #[error("memfd_create for guest memory failed")]
    CreateMemfd(#[source] io::Error),
    #[error("no huge pages available: memfd_create(MFD_HUGETLB) failed (is hugetlbfs enabled?)")]
    HugepagesUnsupported(#[source] io::Error),
    #[error("setting the guest memory file size to {size:#x} failed")]
    SetMemfdSize {
        size: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "mapping {size:#x} bytes of guest memory at {addr:#x} failed{}",
        if *.hugepages { " (not enough free 2 MiB huge pages? see /proc/sys/vm/nr_hugepages)" } else { "" }
    )]
    MapRegion {
        addr: u64,
        size: u64,
        hugepages: bool,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory region at {0:#x} is invalid")]
    InvalidRegion(u64),
    #[error("assembling guest memory regions failed")]
    AssembleRegions(#[source] vm_memory::GuestRegionCollectionError),
}

/// The guest-physical RAM ranges `(start, length)` for `size_bytes` of RAM: everything up to the
/// MMIO gap below 4 GiB, the rest above it.
pub fn ram_regions(size_bytes: u64) -> Result<Vec<(GuestAddress, u64)>, MemoryError> {
    if size_bytes == 0 {
        return Err(MemoryError::ZeroSize);
    }
    if !size_bytes.is_multiple_of(PAGE_SIZE) {
        return Err(MemoryError::Unaligned(size_bytes, PAGE_SIZE));
    }
    if size_bytes > MAX_RAM_SIZE {
        return Err(MemoryError::TooLarge(size_bytes));
    }
    if size_bytes <= MMIO_GAP_START {
        return Ok(vec![(GuestAddress(0), size_bytes)]);
    }
    Ok(vec![
        (GuestAddress(0), MMIO_GAP_START),
        (GuestAddress(MMIO_GAP_END), size_bytes - MMIO_GAP_START),
    ])
}

/// Creates `size_bytes` of guest RAM backed by one memfd mapped `MAP_SHARED`, laid out by
/// [`ram_regions`]. With `hugepages` the memfd uses 2 MiB huge pages and the mapping reserves
/// them up front, so a shortage fails here rather than as a SIGBUS while the guest runs.
pub fn create_guest_memory(
    size_bytes: u64,
    hugepages: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = ram_regions(size_bytes)?;
    if hugepages && !size_bytes.is_multiple_of(HUGEPAGE_SIZE) {
        return Err(MemoryError::Unaligned(size_bytes, HUGEPAGE_SIZE));
    }
    let file = Arc::new(create_memfd(hugepages)?);
    file.set_len(size_bytes)
        .map_err(|source| MemoryError::SetMemfdSize {
            size: size_bytes,
            source,
        })?;

    let mut file_offset = 0;
    let mut mapped = Vec::with_capacity(regions.len());
    for (addr, size) in regions {
        mapped.push(map_region(&file, file_offset, addr, size, hugepages)?);
        file_offset += size;
    }
    GuestMemoryMmap::from_regions(mapped).map_err(MemoryError::AssembleRegions)
}

fn create_memfd(hugepages: bool) -> Result<File, MemoryError> {
    let mut flags = libc::MFD_CLOEXEC;
    if hugepages {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: the name is a valid NUL-terminated string and the flags are valid memfd flags.
    let fd = unsafe { libc::memfd_create(c"tinyvmm-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return Err(if hugepages {
            MemoryError::HugepagesUnsupported(err)
        } else {
            MemoryError::CreateMemfd(err)
        });
    }
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn map_region(
    file: &Arc<File>,
    file_offset: u64,
    addr: GuestAddress,
    size: u64,
    hugepages: bool,
) -> Result<GuestRegionMmap, MemoryError> {
    // Without MAP_NORESERVE a hugetlb mapping reserves its pages now (ENOMEM if short).
    let flags = if hugepages {
        libc::MAP_SHARED
    } else {
        libc::MAP_SHARED | libc::MAP_NORESERVE
    };
    let region = MmapRegionBuilder::new(size as usize)
        .with_file_offset(FileOffset::from_arc(file.clone(), file_offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .with_hugetlbfs(hugepages)
        .build()
        .map_err(|source| MemoryError::MapRegion {
            addr: addr.0,
            size,
            hugepages,
            source,
        })?;
    GuestRegionMmap::new(region, addr).ok_or(MemoryError::InvalidRegion(addr.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn ram_regions_when_below_gap_then_one_region_from_zero() {
        let regions = ram_regions(512 * MIB).unwrap();
        assert_eq!(regions, vec![(GuestAddress(0), 512 * MIB)]);
    }

    #[test]
    fn ram_regions_when_exactly_gap_start_then_one_region() {
        let regions = ram_regions(MMIO_GAP_START).unwrap();
        assert_eq!(regions, vec![(GuestAddress(0), 3 * GIB)]);
    }

    #[test]
    fn ram_regions_when_above_gap_then_rest_starts_at_4g() {
        let regions = ram_regions(3 * GIB + 4096).unwrap();
        assert_eq!(
            regions,
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), 4096)]
        );
        let regions = ram_regions(8 * GIB).unwrap();
        assert_eq!(regions[1], (GuestAddress(4 * GIB), 5 * GIB));
    }

    #[test]
    fn ram_regions_when_size_invalid_then_error() {
        assert!(matches!(ram_regions(0), Err(MemoryError::ZeroSize)));
        assert!(matches!(
            ram_regions(MIB + 1),
            Err(MemoryError::Unaligned(_, PAGE_SIZE))
        ));
        assert!(matches!(
            ram_regions(MAX_RAM_SIZE + PAGE_SIZE),
            Err(MemoryError::TooLarge(_))
        ));
        assert!(ram_regions(MAX_RAM_SIZE).is_ok());
    }

    #[test]
    fn create_guest_memory_when_above_gap_then_regions_share_one_memfd() {
        // 3 GiB + 2 MiB is only reserved address space: memfd pages are allocated on touch.
        let mem = create_guest_memory(3 * GIB + 2 * MIB, false).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].start_addr(), GuestAddress(0));
        assert_eq!(regions[0].len(), 3 * GIB);
        assert_eq!(regions[1].start_addr(), GuestAddress(4 * GIB));
        assert_eq!(regions[1].len(), 2 * MIB);
        let f0 = regions[0].file_offset().unwrap();
        let f1 = regions[1].file_offset().unwrap();
        assert!(Arc::ptr_eq(f0.arc(), f1.arc()));
        assert_eq!(f0.start(), 0);
        assert_eq!(f1.start(), 3 * GIB);

        // The high region is backed by the file right after the low one.
        mem.write_obj(0xdead_beef_u32, GuestAddress(4 * GIB))
            .unwrap();
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        f1.file().read_exact_at(&mut buf, 3 * GIB).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert!(mem.read_obj::<u8>(GuestAddress(MMIO_GAP_START)).is_err());
    }

    fn free_hugepages() -> u64 {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn create_guest_memory_when_hugepages_then_maps_or_fails_clearly() {
        let size = 4 * MIB;
        let result = create_guest_memory(size, true);
        if free_hugepages() >= size / HUGEPAGE_SIZE {
            let mem = result.unwrap();
            assert_eq!(mem.iter().next().unwrap().is_hugetlbfs(), Some(true));
            mem.write_obj(0x1234_u16, GuestAddress(size - 2)).unwrap();
            assert_eq!(mem.read_obj::<u16>(GuestAddress(size - 2)).unwrap(), 0x1234);
        } else {
            eprintln!("NOTE: no free huge pages on this machine: checking the error path only");
            let err = result.unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("huge pages"),
                "error should explain huge pages: {text}"
            );
        }
    }

    #[test]
    fn create_guest_memory_when_hugepages_and_unaligned_then_error() {
        assert!(matches!(
            create_guest_memory(3 * MIB, true),
            Err(MemoryError::Unaligned(_, HUGEPAGE_SIZE))
        ));
    }
}
