//! kvm-smoke: the smallest proof that /dev/kvm runs guest code.
//!
//! Runs a real-mode guest `mov al, 0x42; out 0x10, al; hlt` in one vCPU and prints
//! `kvm_smoke=ok port=0x10 value=0x42` (a line the lab parses when prefixed with `LAB `).
//! Exits 1 with `kvm_smoke=fail reason=...` on any other outcome.

use std::process::ExitCode;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest code: mov al, 0x42; out 0x10, al; hlt.
const GUEST_CODE: [u8; 5] = [0xb0, 0x42, 0xe6, 0x10, 0xf4];
const CODE_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x10000;
/// Upper bound on exits before we call the guest runaway.
const MAX_EXITS: usize = 16;

#[derive(Debug, thiserror::Error)]
enum SmokeError {
    #[error("open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("create VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("allocate guest memory: {0}")]
    AllocateMemory(#[source] vm_memory::mmap::FromRangesError),
    #[error("write guest code: {0}")]
    WriteCode(#[source] vm_memory::GuestMemoryError),
    #[error("find host address of guest memory: {0}")]
    HostAddress(#[source] vm_memory::GuestMemoryError),
    #[error("set user memory region: {0}")]
    SetMemoryRegion(#[source] kvm_ioctls::Error),
    #[error("create vCPU: {0}")]
    CreateVcpu(#[source] kvm_ioctls::Error),
    #[error("get/set vCPU registers: {0}")]
    SetRegisters(#[source] kvm_ioctls::Error),
    #[error("run vCPU: {0}")]
    RunVcpu(#[source] kvm_ioctls::Error),
    #[error("unexpected exit {0}")]
    UnexpectedExit(String),
    #[error("guest halted without writing port 0x10")]
    NoOutput,
}

fn run_guest() -> Result<(u16, u8), SmokeError> {
    // `mem` is declared before `vm` so that it is dropped after the VM that maps it.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .map_err(SmokeError::AllocateMemory)?;
    let kvm = Kvm::new().map_err(SmokeError::OpenKvm)?;
    let vm = kvm.create_vm().map_err(SmokeError::CreateVm)?;
    mem.write_slice(&GUEST_CODE, GuestAddress(CODE_ADDR))
        .map_err(SmokeError::WriteCode)?;
    let host_addr = mem
        .get_host_address(GuestAddress(0))
        .map_err(SmokeError::HostAddress)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host_addr as u64,
    };
    // SAFETY: the region describes `mem`, a live mapping of MEM_SIZE bytes that outlives `vm`
    // (declared earlier, dropped later), and slot 0 is not used by any other region.
    unsafe { vm.set_user_memory_region(region) }.map_err(SmokeError::SetMemoryRegion)?;

    let mut vcpu = vm.create_vcpu(0).map_err(SmokeError::CreateVcpu)?;
    let mut sregs = vcpu.get_sregs().map_err(SmokeError::SetRegisters)?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(SmokeError::SetRegisters)?;
    let mut regs = vcpu.get_regs().map_err(SmokeError::SetRegisters)?;
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(SmokeError::SetRegisters)?;

    let mut seen = None;
    for _ in 0..MAX_EXITS {
        match vcpu.run().map_err(SmokeError::RunVcpu)? {
            VcpuExit::IoOut(port, data) => seen = Some((port, data.first().copied().unwrap_or(0))),
            VcpuExit::Hlt => return seen.ok_or(SmokeError::NoOutput),
            other => return Err(SmokeError::UnexpectedExit(format!("{other:?}"))),
        }
    }
    Err(SmokeError::UnexpectedExit(format!(
        "more than {MAX_EXITS} exits"
    )))
}

fn main() -> ExitCode {
    match run_guest() {
        Ok((port, value)) if port == 0x10 && value == 0x42 => {
            println!("kvm_smoke=ok port={port:#x} value={value:#x}");
            ExitCode::SUCCESS
        }
        Ok((port, value)) => {
            println!("kvm_smoke=fail reason=wrong-output port={port:#x} value={value:#x}");
            ExitCode::FAILURE
        }
        Err(e) => {
            let reason = e.to_string().replace(' ', "_");
            println!("kvm_smoke=fail reason={reason}");
            eprintln!("kvm-smoke: {e}");
            ExitCode::FAILURE
        }
    }
}
