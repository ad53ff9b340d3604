//! Per-vCPU CPUID patching.

use kvm_bindings::CpuId;

/// Errors while patching CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("vCPU id {vcpu_id} is out of range for {num_cpus} vCPUs")]
    VcpuIdOutOfRange { vcpu_id: u8, num_cpus: u8 },
}

/// Patches `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `vcpu_id` of `num_cpus`.
pub fn patch_cpuid(cpuid: &mut CpuId, vcpu_id: u8, num_cpus: u8) -> Result<(), CpuidError> {
    let _ = cpuid;
    Err(CpuidError::VcpuIdOutOfRange { vcpu_id, num_cpus })
}
