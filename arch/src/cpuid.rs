//! Per-vCPU CPUID: KVM_GET_SUPPORTED_CPUID patched with this vCPU's APIC id and a topology of
//! `num_cpus` single-threaded cores in one package. Hypervisor leaves (0x4000_0000..) are left
//! exactly as KVM reports them: PVM guests depend on them.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: the logical processor count in EBX[23:16] is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// x2APIC topology level types (leaves 0xB and 0x1F, ECX[15:8]).
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// Leaf 4 EAX[7:5]: cache level.
const LEAF4_CACHE_LEVEL_SHIFT: u32 = 5;

/// Errors while patching CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("vCPU id {vcpu_id} is out of range for {num_cpus} vCPUs")]
    VcpuIdOutOfRange { vcpu_id: u8, num_cpus: u8 },
}

/// Patches `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `vcpu_id` of `num_cpus`:
/// leaf 1 (APIC id, logical count, HTT, hypervisor bit), leaf 4 (cores per package, cache
/// sharing), leaves 0xB/0x1F (x2APIC topology), and on AMD leaves 0x8000_0008/0x8000_001E.
pub fn patch_cpuid(cpuid: &mut CpuId, vcpu_id: u8, num_cpus: u8) -> Result<(), CpuidError> {
    if vcpu_id >= num_cpus {
        return Err(CpuidError::VcpuIdOutOfRange { vcpu_id, num_cpus });
    }
    let amd = is_amd(cpuid.as_slice());
    let topo = Topology::new(vcpu_id, num_cpus);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => patch_leaf_1(entry, &topo),
            0x4 => patch_leaf_4(entry, &topo),
            0xb | 0x1f => patch_extended_topology(entry, &topo),
            0x8000_0008 if amd => patch_amd_core_count(entry, &topo),
            0x8000_001e if amd => patch_amd_extended_apic(entry, &topo),
            _ => {}
        }
    }
    Ok(())
}

struct Topology {
    apic_id: u32,
    cpus: u32,
    /// Bits of the APIC id that number the cores: ceil(log2(cpus)).
    core_bits: u32,
}

impl Topology {
    fn new(vcpu_id: u8, num_cpus: u8) -> Self {
        let cpus = u32::from(num_cpus);
        Topology {
            apic_id: u32::from(vcpu_id),
            cpus,
            core_bits: cpus.next_power_of_two().trailing_zeros(),
        }
    }
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().any(|e| {
        e.function == 0
            && ((e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) // AuthenticAMD
                || (e.ebx, e.edx, e.ecx) == (0x6f67_7948, 0x6e65_476e, 0x656e_6975))
        // HygonGenuine
    })
}

fn patch_leaf_1(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package; keep CLFLUSH size
    // and brand index.
    entry.ebx = (entry.ebx & 0x0000_ffff) | (topo.apic_id << 24) | ((topo.cpus & 0xff) << 16);
    entry.ecx |= LEAF1_ECX_HYPERVISOR;
    if topo.cpus > 1 {
        entry.edx |= LEAF1_EDX_HTT;
    } else {
        entry.edx &= !LEAF1_EDX_HTT;
    }
}

fn patch_leaf_4(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    if entry.eax & 0x1f == 0 {
        return; // no more caches
    }
    // EAX[31:26] cores per package - 1; EAX[25:14] logical processors sharing this cache - 1.
    let level = (entry.eax >> LEAF4_CACHE_LEVEL_SHIFT) & 0x7;
    let sharing = if level >= 3 { topo.cpus - 1 } else { 0 };
    entry.eax &= 0x3fff;
    entry.eax |= ((topo.cpus - 1) & 0x3f) << 26;
    entry.eax |= (sharing & 0xfff) << 14;
}

fn patch_extended_topology(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    // EAX[4:0] APIC id shift to the next level, EBX[15:0] logical processors at this level,
    // ECX[15:8] level type, ECX[7:0] level number, EDX x2APIC id.
    let (shift, count, level_type) = match entry.index {
        0 => (0, 1, LEVEL_TYPE_SMT),
        1 => (topo.core_bits, topo.cpus, LEVEL_TYPE_CORE),
        _ => (0, 0, LEVEL_TYPE_INVALID),
    };
    entry.eax = shift;
    entry.ebx = count;
    entry.ecx = (level_type << 8) | (entry.index & 0xff);
    entry.edx = topo.apic_id;
}

fn patch_amd_core_count(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    // ECX[7:0] threads per package - 1, ECX[15:12] APIC id bits for the core number.
    entry.ecx &= !0xf0ff;
    entry.ecx |= (topo.cpus - 1) & 0xff;
    entry.ecx |= (topo.core_bits & 0xf) << 12;
}

fn patch_amd_extended_apic(entry: &mut kvm_cpuid_entry2, topo: &Topology) {
    // EAX extended APIC id; EBX[7:0] core id, EBX[15:8] threads per core - 1; ECX one node.
    entry.eax = topo.apic_id;
    entry.ebx = topo.apic_id & 0xff;
    entry.ecx = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            padding: [0; 3],
        }
    }

    /// A CpuId shaped like KVM's on an AMD host, with distinctive hypervisor leaves.
    fn sample(amd: bool) -> CpuId {
        let vendor = if amd {
            [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]
        } else {
            [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69] // GenuineIntel
        };
        CpuId::from_entries(&[
            leaf(0, 0, vendor),
            leaf(1, 0, [0x806f0, 0x0f00_0800, 0x0120_2000, 0x0789_fbff]),
            leaf(4, 0, [0x0000_0121, 0, 0, 0]), // L1d
            leaf(4, 1, [0x0000_0143, 0, 0, 0]), // L2
            leaf(4, 2, [0x0000_0163, 0, 0, 0]), // L3
            leaf(4, 3, [0, 0, 0, 0]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [4, 16, 0x201, 7]),
            leaf(0xb, 2, [0, 0, 2, 7]),
            leaf(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            leaf(0x4000_0001, 0, [0x0100_7afb, 0, 0, 0x1]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0x7007, 0]),
            leaf(0x8000_001e, 0, [0x55, 0x0166, 0x0101, 0]),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn patch_cpuid_when_vcpu_2_of_4_then_leaf1_apic_id_count_and_bits() {
        let mut cpuid = sample(false);
        patch_cpuid(&mut cpuid, 2, 4).unwrap();
        let l1 = find(&cpuid, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(
            l1.ecx & !LEAF1_ECX_HYPERVISOR,
            0x0120_2000,
            "other features kept"
        );
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn patch_cpuid_when_single_vcpu_then_no_htt() {
        let mut cpuid = sample(false);
        patch_cpuid(&mut cpuid, 0, 1).unwrap();
        let l1 = find(&cpuid, 1, 0);
        assert_eq!(l1.ebx >> 16, 0x0001);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn patch_cpuid_when_3_vcpus_then_x2apic_topology_levels() {
        let mut cpuid = sample(false);
        patch_cpuid(&mut cpuid, 1, 3).unwrap();
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!([smt.eax, smt.ebx, smt.ecx, smt.edx], [0, 1, 0x100, 1]);
        let core = find(&cpuid, 0xb, 1);
        assert_eq!([core.eax, core.ebx, core.ecx, core.edx], [2, 3, 0x201, 1]);
        let end = find(&cpuid, 0xb, 2);
        assert_eq!([end.eax, end.ebx, end.ecx, end.edx], [0, 0, 2, 1]);
    }

    #[test]
    fn patch_cpuid_when_4_vcpus_then_leaf4_core_count_and_l3_shared() {
        let mut cpuid = sample(false);
        patch_cpuid(&mut cpuid, 0, 4).unwrap();
        for index in 0..3 {
            let l4 = find(&cpuid, 4, index);
            assert_eq!(l4.eax >> 26, 3, "cores per package - 1");
            assert_eq!(l4.eax & 0x3fff, [0x121, 0x143, 0x163][index as usize]);
        }
        assert_eq!((find(&cpuid, 4, 0).eax >> 14) & 0xfff, 0, "L1 private");
        assert_eq!(
            (find(&cpuid, 4, 2).eax >> 14) & 0xfff,
            3,
            "L3 shared by all"
        );
        assert_eq!(find(&cpuid, 4, 3).eax, 0, "terminator untouched");
    }

    #[test]
    fn patch_cpuid_when_patched_then_hypervisor_leaves_untouched() {
        let original = sample(true);
        let mut cpuid = original.clone();
        patch_cpuid(&mut cpuid, 3, 8).unwrap();
        for function in [0x4000_0000, 0x4000_0001] {
            assert_eq!(find(&cpuid, function, 0), find(&original, function, 0));
        }
        assert_eq!(find(&cpuid, 0, 0), find(&original, 0, 0));
    }

    #[test]
    fn patch_cpuid_when_amd_then_extended_leaves_describe_cores() {
        let mut cpuid = sample(true);
        patch_cpuid(&mut cpuid, 5, 6).unwrap();
        let l8 = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(l8.ecx & 0xff, 5);
        assert_eq!((l8.ecx >> 12) & 0xf, 3);
        let l1e = find(&cpuid, 0x8000_001e, 0);
        assert_eq!([l1e.eax, l1e.ebx, l1e.ecx], [5, 5, 0]);
    }

    #[test]
    fn patch_cpuid_when_intel_then_amd_leaves_untouched() {
        let original = sample(false);
        let mut cpuid = original.clone();
        patch_cpuid(&mut cpuid, 1, 2).unwrap();
        assert_eq!(
            find(&cpuid, 0x8000_001e, 0),
            find(&original, 0x8000_001e, 0)
        );
    }

    #[test]
    fn patch_cpuid_when_vcpu_id_out_of_range_then_error() {
        let mut cpuid = sample(false);
        assert!(matches!(
            patch_cpuid(&mut cpuid, 2, 2),
            Err(CpuidError::VcpuIdOutOfRange {
                vcpu_id: 2,
                num_cpus: 2
            })
        ));
    }
}
