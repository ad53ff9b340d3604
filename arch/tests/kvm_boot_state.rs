//! Runs tiny hand-made guests on the real /dev/kvm to prove the boot vCPU state: the first
//! instruction executes in 64-bit long mode (Linux64) or 32-bit protected mode (PVH) and reaches
//! the ACPI PM port. On PVM these few instructions are emulated one by one, which is fine.

use std::io::Write;

use arch::boot::{load_and_configure, BootEntry, BootProtocol, BootSpec};
use arch::layout::{ACPI_PM_PORT, HIMEM_START, PVH_INFO_START, ZERO_PAGE_START};
use arch::memory::create_guest_memory;
use arch::vcpu::configure_vcpu;
use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// `movabs rax, 0x1122334455667734; mov dx, 0x3c0; out dx, al; hlt` (64-bit code).
const LONG_MODE_CODE: &[u8] = &[
    0x48, 0xb8, 0x34, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x66, 0xba, 0xc0, 0x03, 0xee, 0xf4,
];
/// `mov eax, 0x12345634; mov dx, 0x3c0; out dx, al; hlt` (32-bit code).
const PROTECTED_MODE_CODE: &[u8] = &[
    0xb8, 0x34, 0x56, 0x34, 0x12, 0x66, 0xba, 0xc0, 0x03, 0xee, 0xf4,
];

struct TestVm {
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
}

/// A VM with 64 MiB of memfd RAM and a split irqchip (in-kernel LAPICs), or None (loudly) when
/// this machine has no usable /dev/kvm.
fn test_vm() -> Option<TestVm> {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            eprintln!("SKIPPED: cannot open /dev/kvm ({e}); the vCPU boot state is NOT verified");
            return None;
        }
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let mem = create_guest_memory(64 << 20, false).expect("guest memory");
    for (slot, region) in mem.iter().enumerate() {
        let host = region.get_host_address(MemoryRegionAddress(0)).unwrap();
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping described stays alive in `mem` for as long as the VM exists
        // (TestVm keeps both, and the VM is dropped with it).
        unsafe { vm.set_user_memory_region(region_desc) }.expect("KVM_SET_USER_MEMORY_REGION");
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = 24;
    vm.enable_cap(&cap).expect("KVM_ENABLE_CAP(SPLIT_IRQCHIP)");
    Some(TestVm { kvm, vm, mem })
}

fn configured_vcpu(t: &TestVm, entry: &BootEntry, id: u8, num_cpus: u8) -> VcpuFd {
    let vcpu = t.vm.create_vcpu(u64::from(id)).expect("KVM_CREATE_VCPU");
    let cpuid = t
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID");
    configure_vcpu(&vcpu, &cpuid, &t.mem, entry, id, num_cpus).expect("configure_vcpu");
    vcpu
}

/// Runs until the first exit and returns the port and byte written, if it was a port write.
fn run_to_port_write(vcpu: &mut VcpuFd) -> (u16, Vec<u8>) {
    match vcpu.run().expect("KVM_RUN") {
        VcpuExit::IoOut(port, data) => (port, data.to_vec()),
        other => panic!("expected a port write, got {other:?}"),
    }
}

#[test]
fn configure_vcpu_when_linux64_entry_then_guest_runs_64bit_code_and_writes_pm_port() {
    let Some(t) = test_vm() else { return };
    t.mem
        .write_slice(LONG_MODE_CODE, GuestAddress(HIMEM_START))
        .unwrap();
    let entry = BootEntry {
        entry: GuestAddress(HIMEM_START),
        protocol: BootProtocol::Linux64,
        params_addr: GuestAddress(ZERO_PAGE_START),
    };
    let mut vcpu = configured_vcpu(&t, &entry, 0, 1);

    let (port, data) = run_to_port_write(&mut vcpu);

    assert_eq!((port, data), (ACPI_PM_PORT, vec![0x34]));
    let regs = vcpu.get_regs().unwrap();
    assert_eq!(
        regs.rax, 0x1122_3344_5566_7734,
        "a 64-bit immediate only loads in long mode"
    );
    assert_eq!(regs.rsi, ZERO_PAGE_START);
    let sregs = vcpu.get_sregs().unwrap();
    assert_eq!(sregs.cs.l, 1);
    assert_ne!(sregs.efer & (1 << 10), 0, "EFER.LMA");
}

#[test]
fn configure_vcpu_when_pvh_entry_then_guest_runs_32bit_code_with_start_info_in_ebx() {
    let Some(t) = test_vm() else { return };
    t.mem
        .write_slice(PROTECTED_MODE_CODE, GuestAddress(HIMEM_START))
        .unwrap();
    let entry = BootEntry {
        entry: GuestAddress(HIMEM_START),
        protocol: BootProtocol::Pvh,
        params_addr: GuestAddress(PVH_INFO_START),
    };
    let mut vcpu = configured_vcpu(&t, &entry, 0, 1);

    let (port, data) = run_to_port_write(&mut vcpu);

    assert_eq!((port, data), (ACPI_PM_PORT, vec![0x34]));
    let regs = vcpu.get_regs().unwrap();
    assert_eq!(
        regs.rax, 0x1234_5634,
        "a 32-bit immediate loads in 32-bit mode"
    );
    assert_eq!(regs.rbx, PVH_INFO_START);
    let sregs = vcpu.get_sregs().unwrap();
    assert_eq!((sregs.cs.db, sregs.cs.l, sregs.cr0 & (1 << 31)), (1, 0, 0));
}

#[test]
fn configure_vcpu_when_application_processor_then_cpuid_and_lapic_set_without_boot_regs() {
    let Some(t) = test_vm() else { return };
    let entry = BootEntry {
        entry: GuestAddress(HIMEM_START),
        protocol: BootProtocol::Linux64,
        params_addr: GuestAddress(ZERO_PAGE_START),
    };
    let _bsp = configured_vcpu(&t, &entry, 0, 2);
    let ap = configured_vcpu(&t, &entry, 1, 2);

    assert_ne!(
        ap.get_regs().unwrap().rip,
        HIMEM_START,
        "APs wait for INIT/SIPI"
    );
    let lapic = ap.get_lapic().unwrap();
    assert_eq!(
        (arch::vcpu::lapic_reg(&lapic, 0x350) >> 8) & 7,
        7,
        "LINT0 ExtINT"
    );
    assert_eq!(
        (arch::vcpu::lapic_reg(&lapic, 0x360) >> 8) & 7,
        4,
        "LINT1 NMI"
    );
}

/// `mov al, [rsi + 0x210]` (zero page `type_of_loader`); `mov dx, 0x3c0; out dx, al; hlt`.
const READ_ZERO_PAGE_CODE: &[u8] = &[
    0x8a, 0x86, 0x10, 0x02, 0x00, 0x00, 0x66, 0xba, 0xc0, 0x03, 0xee, 0xf4,
];
/// `mov eax, [ebx]` (`hvm_start_info.magic`); `mov dx, 0x3c0; out dx, eax; hlt`.
const READ_START_INFO_CODE: &[u8] = &[0x8b, 0x03, 0x66, 0xba, 0xc0, 0x03, 0xef, 0xf4];

/// An ELF64 executable loading `code` at 2 MiB with its entry there; with `pvh`, a Xen
/// PHYS32_ENTRY note points at the same code.
fn elf_kernel(code: &[u8], pvh: bool) -> Vec<u8> {
    const LOAD: u64 = 0x20_0000;
    let mut image = Vec::new();
    image.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    image.extend_from_slice(&[2, 0, 0x3e, 0, 1, 0, 0, 0]); // ET_EXEC, x86-64, version 1
    for quad in [LOAD, 64, 0] {
        image.extend_from_slice(&u64::to_le_bytes(quad)); // entry, phoff, shoff
    }
    image.extend_from_slice(&[0; 4]); // flags
    for half in [64u16, 56, 1 + u16::from(pvh), 0, 0, 0] {
        image.extend_from_slice(&half.to_le_bytes());
    }
    let mut phdr = |p_type: u32, offset: u64, paddr: u64, size: u64| {
        image.extend_from_slice(&p_type.to_le_bytes());
        image.extend_from_slice(&5u32.to_le_bytes());
        for quad in [offset, paddr, paddr, size, size, 0x1000] {
            image.extend_from_slice(&quad.to_le_bytes());
        }
    };
    phdr(1, 0x200, LOAD, code.len() as u64);
    if pvh {
        phdr(4, 0x100, 0, 20);
    }
    image.resize(0x100, 0);
    for word in [4u32, 4, 18] {
        image.extend_from_slice(&word.to_le_bytes());
    }
    image.extend_from_slice(b"Xen\0");
    image.extend_from_slice(&(LOAD as u32).to_le_bytes());
    image.resize(0x200, 0);
    image.extend_from_slice(code);
    image
}

/// A bzImage (one setup sector, 64-bit entry flag) whose protected-mode part holds `code` at
/// the 64-bit entry offset 0x200.
fn bzimage_kernel(code: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&(HIMEM_START as u32).to_le_bytes());
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    image.resize(1024 + 0x200, 0x90);
    image.extend_from_slice(code);
    image
}

fn boot_file(t: &TestVm, kernel: &[u8]) -> (BootEntry, VcpuFd) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(kernel).unwrap();
    let spec = BootSpec {
        kernel: file.path(),
        initrd: None,
        cmdline: "console=ttyS0",
        num_cpus: 1,
        rsdp: None,
    };
    let entry = load_and_configure(&t.mem, &spec).expect("load_and_configure");
    let vcpu = configured_vcpu(t, &entry, 0, 1);
    (entry, vcpu)
}

#[test]
fn boot_when_bzimage_then_64bit_entry_reads_zero_page_through_rsi() {
    let Some(t) = test_vm() else { return };
    let (entry, mut vcpu) = boot_file(&t, &bzimage_kernel(READ_ZERO_PAGE_CODE));
    assert_eq!(entry.protocol, BootProtocol::Linux64);

    let (port, data) = run_to_port_write(&mut vcpu);

    assert_eq!(
        (port, data),
        (ACPI_PM_PORT, vec![0xff]),
        "type_of_loader via rsi"
    );
}

#[test]
fn boot_when_elf_without_pvh_note_then_64bit_entry_reads_zero_page() {
    let Some(t) = test_vm() else { return };
    let (entry, mut vcpu) = boot_file(&t, &elf_kernel(READ_ZERO_PAGE_CODE, false));
    assert_eq!(entry.protocol, BootProtocol::Linux64);

    let (port, data) = run_to_port_write(&mut vcpu);

    assert_eq!((port, data), (ACPI_PM_PORT, vec![0xff]));
}

#[test]
fn boot_when_elf_with_pvh_note_then_32bit_entry_reads_start_info_magic_through_ebx() {
    let Some(t) = test_vm() else { return };
    let (entry, mut vcpu) = boot_file(&t, &elf_kernel(READ_START_INFO_CODE, true));
    assert_eq!(entry.protocol, BootProtocol::Pvh);

    let (port, data) = run_to_port_write(&mut vcpu);

    assert_eq!(port, ACPI_PM_PORT);
    assert_eq!(
        data,
        0x336e_c578u32.to_le_bytes(),
        "hvm_start_info magic via ebx"
    );
}
