//! Per-vCPU state before the first KVM_RUN: CPUID, MSRs, FPU, LAPIC LINT pins, and for the boot
//! vCPU (id 0) the registers of the kernel's entry protocol. The other vCPUs stay in the
//! in-kernel LAPIC's wait-for-SIPI state until the guest starts them with INIT/SIPI.

pub mod regs;

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::boot::BootEntry;

/// MSR indices of the boot set.
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default memory type write-back.
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRBACK: u64 = 6;

/// FPU control word and MXCSR after FNINIT / reset.
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

/// LAPIC registers and LVT delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors while configuring a vCPU; each names the failed ioctl or step.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    #[error("patching CPUID")]
    Cpuid(#[source] crate::cpuid::CpuidError),
    #[error("KVM_SET_CPUID2")]
    SetCpuid(#[source] kvm_ioctls::Error),
    #[error("building the MSR list")]
    BuildMsrs(#[source] vmm_sys_util::fam::Error),
    #[error("KVM_SET_MSRS")]
    SetMsrs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_MSRS set only {set} of {total} MSRs; MSR {failed:#x} was rejected")]
    MsrRejected {
        set: usize,
        total: usize,
        failed: u32,
    },
    #[error("KVM_SET_FPU")]
    SetFpu(#[source] kvm_ioctls::Error),
    #[error("KVM_GET_LAPIC (is the in-kernel irqchip created?)")]
    GetLapic(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_LAPIC")]
    SetLapic(#[source] kvm_ioctls::Error),
    #[error("writing the boot GDT, IDT or page tables to guest memory")]
    WriteBootTables(#[source] vm_memory::GuestMemoryError),
    #[error("KVM_GET_SREGS")]
    GetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_SREGS")]
    SetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_REGS")]
    SetRegs(#[source] kvm_ioctls::Error),
}

/// Sets CPUID, MSRs, FPU and LAPIC of a vCPU; for vCPU 0 also the boot registers for `entry`.
/// Needs the in-kernel LAPIC (KVM_CREATE_IRQCHIP or a split irqchip) to exist.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    supported_cpuid: &CpuId,
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
    vcpu_id: u8,
    num_cpus: u8,
) -> Result<(), VcpuSetupError> {
    let mut cpuid = supported_cpuid.clone();
    crate::cpuid::patch_cpuid(&mut cpuid, vcpu_id, num_cpus).map_err(VcpuSetupError::Cpuid)?;
    vcpu.set_cpuid2(&cpuid).map_err(VcpuSetupError::SetCpuid)?;
    set_boot_msrs(vcpu)?;
    vcpu.set_fpu(&boot_fpu()).map_err(VcpuSetupError::SetFpu)?;
    set_lint_pins(vcpu)?;
    if vcpu_id == 0 {
        set_boot_registers(vcpu, mem, entry)?;
    }
    Ok(())
}

/// The MSR values every vCPU starts with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
}

fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), VcpuSetupError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(VcpuSetupError::BuildMsrs)?;
    let set = vcpu.set_msrs(&msrs).map_err(VcpuSetupError::SetMsrs)?;
    // KVM stops at the first MSR it rejects and returns how many it set.
    if set < entries.len() {
        return Err(VcpuSetupError::MsrRejected {
            set,
            total: entries.len(),
            failed: entries[set].index,
        });
    }
    Ok(())
}

/// FPU state after FNINIT with default MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

/// LINT0 delivers the PIC's ExtINT, LINT1 the NMI, as on a PC.
fn set_lint_pins(vcpu: &VcpuFd) -> Result<(), VcpuSetupError> {
    let mut lapic = vcpu.get_lapic().map_err(VcpuSetupError::GetLapic)?;
    set_lvt_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_delivery_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(VcpuSetupError::SetLapic)
}

/// Replaces the delivery mode (bits 10:8) of the LVT register at `offset`.
pub fn set_lvt_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let reg = lapic_reg(lapic, offset);
    set_lapic_reg(lapic, offset, (reg & !0x700) | (mode << 8));
}

/// The 32-bit LAPIC register at `offset`.
pub fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

fn set_boot_registers(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
) -> Result<(), VcpuSetupError> {
    regs::write_gdt_and_idt(mem, entry.protocol).map_err(VcpuSetupError::WriteBootTables)?;
    if entry.protocol == crate::boot::BootProtocol::Linux64 {
        regs::write_identity_page_tables(mem).map_err(VcpuSetupError::WriteBootTables)?;
    }
    let sregs = vcpu.get_sregs().map_err(VcpuSetupError::GetSregs)?;
    vcpu.set_sregs(&regs::boot_sregs(sregs, entry.protocol))
        .map_err(VcpuSetupError::SetSregs)?;
    vcpu.set_regs(&regs::boot_regs(entry))
        .map_err(VcpuSetupError::SetRegs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_lvt_delivery_mode_when_masked_register_then_only_mode_bits_change() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0000 | 0x30); // masked, vector 0x30
        set_lapic_reg(&mut lapic, APIC_LVT1, 0x0000_0700);
        set_lvt_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_delivery_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x0001_0730);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x0000_0400);
    }

    #[test]
    fn boot_msr_entries_when_built_then_fast_strings_and_wb_mtrr() {
        let entries = boot_msr_entries();
        let value = |index| entries.iter().find(|e| e.index == index).unwrap().data;
        assert_eq!(value(MSR_IA32_MISC_ENABLE), 1);
        assert_eq!(value(MSR_MTRR_DEF_TYPE), 0x806);
        assert_eq!(value(MSR_LSTAR), 0);
        assert_eq!(entries.len(), 11);
    }

    #[test]
    fn boot_fpu_when_built_then_reset_control_words() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
    }
}
