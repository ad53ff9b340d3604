//! The fixed-format tables: RSDP, XSDT, FADT and MADT.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;

use super::{to_bytes, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

use crate::layout::{ACPI_PM_PORT, IOAPIC_ADDR, LAPIC_ADDR};

/// Size of an ACPI 2.0+ RSDP.
pub(super) const RSDP_LEN: usize = 36;

/// What the guest writes to the reset register (`devices::legacy::acpi_pm::RESET_VALUE`).
const RESET_VALUE: u8 = 0x01;

/// FADT `IAPC_BOOT_ARCH` bits (ACPI 6.5, table 5.11).
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// FADT "Hypervisor Vendor Identity".
const HYPERVISOR_VENDOR: [u8; 8] = *b"TINYVMM\0";

/// MADT revision of ACPI 6.4/6.5.
const MADT_REVISION: u8 = 5;
/// MADT flag: the machine also has dual 8259 PICs (which Linux masks).
const MADT_PCAT_COMPAT: u32 = 1;
/// Offsets of the MADT fields that follow the standard header.
const MADT_LAPIC_ADDR_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
const MADT_HEADER_LEN: u32 = 44;

/// The RSDP (revision 2) pointing at the XSDT.
pub(super) fn create_rsdp(xsdt_addr: u64) -> Vec<u8> {
    to_bytes(&Rsdp::new(OEM_ID, xsdt_addr))
}

/// The XSDT listing `entries` (the DSDT is reached through the FADT, not listed here).
pub(super) fn create_xsdt(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for entry in entries {
        xsdt.add_entry(*entry);
    }
    to_bytes(&xsdt)
}

/// The byte-wide I/O register at `ACPI_PM_PORT`, in Generic Address Structure form.
fn pm_register() -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_PM_PORT),
    )
}

/// The FADT (revision 6.5) of a hardware-reduced platform with the DSDT at `dsdt_addr`.
pub(super) fn create_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power and sleep buttons, if any, are control-method devices (PWRB in the DSDT).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = pm_register();
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = pm_register();
    fadt.sleep_status_reg = pm_register();
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_8042
        | IAPC_BOOT_ARCH_VGA_NOT_PRESENT
        | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT)
        .into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    to_bytes(&fadt.finalize())
}

/// The MADT: one enabled local APIC per vCPU (APIC ID = vCPU index) and the IOAPIC with GSI
/// base 0. ISA IRQs map 1:1 to GSIs (no overrides), matching KVM's default GSI routing.
pub(super) fn create_madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(MADT_LAPIC_ADDR_OFFSET, LAPIC_ADDR as u32);
    madt.write_u32(MADT_FLAGS_OFFSET, MADT_PCAT_COMPAT);
    for cpu in 0..num_cpus {
        let lapic = ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled);
        madt.append_slice(&to_bytes(&lapic));
    }
    madt.append_slice(&to_bytes(&IoApic::new(0, IOAPIC_ADDR as u32, 0)));
    madt.as_slice().to_vec()
}
