//! The DSDT: AML describing the devices the guest cannot discover by itself.
//!
//! ```text
//! Name (\_S5_, Package { 5, 0, 0, 0 })      // SLP_TYP of soft-off, see devices::legacy::acpi_pm
//! Scope (\_SB_) {
//!   Device (PWRB) { _HID PNP0C0C }         // power button, target of the GED's Notify
//!   Device (GED_) { _HID ACPI0013, _CRS { Interrupt GSI 5 },
//!                   OperationRegion (GED block) + Field GDAT (the event byte),
//!                   Method (_EVT, 1) { if (GDAT & 1) Notify (\_SB_.PWRB, 0x80) } }
//!   Device (COM1) { _HID PNP0501, IO 0x3f8/8, IRQ 4 }          // only with a serial port
//!   Device (KBD_) { _HID PNP0303, IO 0x60, IO 0x64, IRQ 1 }
//!   Device (PEVT) { _HID QEMU0001, IO 0x505/1 }                // pvpanic
//!   Device (VRxx) { _HID LNRO0005, _UID xx, _CCA 1, _CRS { Memory32Fixed, Interrupt } }
//! }
//! ```

use acpi_tables::aml::{
    self, Device, EISAName, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule,
    Interrupt, Memory32Fixed, Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path,
    ResourceTemplate, Scope, Store, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{to_bytes, AcpiConfig, VirtioMmioDesc, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

use crate::layout::{GED_ADDR, GED_GSI, I8042_GSI, PVPANIC_PORT, SERIAL_GSI};

/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// `SLP_TYP` for S5; the ACPI PM register powers off on `(5 << 2) | SLP_EN`.
const S5_SLEEP_TYPE: u8 = 5;
/// Notify value for a power button: "button pressed".
const NOTIFY_POWER_BUTTON: u8 = 0x80;
/// COM1 I/O base and length.
const COM1_PORT: u16 = 0x3f8;
const COM1_LEN: u8 = 8;
/// i8042 data and command ports.
const I8042_DATA_PORT: u16 = 0x60;
const I8042_CMD_PORT: u16 = 0x64;

/// Builds the complete, checksummed DSDT.
pub(super) fn create_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();
    sleep_state_s5().to_aml_bytes(&mut body);

    let mut devices = Vec::new();
    devices.extend(power_button());
    devices.extend(generic_event_device());
    if cfg.serial {
        devices.extend(com1());
    }
    devices.extend(i8042());
    devices.extend(pvpanic());
    for (index, desc) in cfg.virtio_mmio.iter().enumerate() {
        devices.extend(virtio_mmio(index, desc));
    }
    body.extend(Scope::raw(Path::new("\\_SB_"), devices));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

fn sleep_state_s5() -> Name {
    let package = Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]);
    Name::new(Path::new("_S5_"), &package)
}

fn power_button() -> Vec<u8> {
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0C0C"));
    let uid = Name::new(Path::new("_UID"), &aml::ZERO);
    to_bytes(&Device::new(Path::new("PWRB"), vec![&hid, &uid]))
}

fn generic_event_device() -> Vec<u8> {
    let hid = Name::new(Path::new("_HID"), &"ACPI0013");
    let uid = Name::new(Path::new("_UID"), &aml::ZERO);
    // Only the interrupt goes in _CRS: Linux's GED driver (drivers/acpi/evged.c) fails its
    // probe on any non-interrupt resource there. The register block is reached through the
    // OperationRegion below instead.
    let irq = Interrupt::new(true, true, false, false, GED_GSI);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&irq]));
    let region = OpRegion::new(
        Path::new("GDST"),
        OpRegionSpace::SystemMemory,
        &GED_ADDR,
        &1u8,
    );
    let field = Field::new(
        Path::new("GDST"),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    // Read the event byte once (the read clears it), then act on each bit.
    let gdat = Path::new("GDAT");
    let local0 = aml::Local(0);
    let read_events = Store::new(&local0, &gdat);
    let button_bit = aml::And::new(&aml::ZERO, &local0, &aml::ONE);
    let power_button = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&power_button, &NOTIFY_POWER_BUTTON);
    let on_button = aml::If::new(&button_bit, vec![&notify]);
    let evt = Method::new(Path::new("_EVT"), 1, true, vec![&read_events, &on_button]);
    to_bytes(&Device::new(
        Path::new("GED_"),
        vec![&hid, &uid, &crs, &region, &field, &evt],
    ))
}

fn com1() -> Vec<u8> {
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0501"));
    let uid = Name::new(Path::new("_UID"), &aml::ONE);
    let io = IO::new(COM1_PORT, COM1_PORT, 0, COM1_LEN);
    let irq = Interrupt::new(true, true, false, false, SERIAL_GSI);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&io, &irq]));
    to_bytes(&Device::new(Path::new("COM1"), vec![&hid, &uid, &crs]))
}

fn i8042() -> Vec<u8> {
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0303"));
    let uid = Name::new(Path::new("_UID"), &aml::ZERO);
    let data = IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let cmd = IO::new(I8042_CMD_PORT, I8042_CMD_PORT, 1, 1);
    let irq = Interrupt::new(true, true, false, false, I8042_GSI);
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&data, &cmd, &irq]),
    );
    to_bytes(&Device::new(Path::new("KBD_"), vec![&hid, &uid, &crs]))
}

/// The pvpanic device, so Linux's pvpanic driver tells the VMM about a kernel panic.
fn pvpanic() -> Vec<u8> {
    let hid = Name::new(Path::new("_HID"), &"QEMU0001");
    let uid = Name::new(Path::new("_UID"), &aml::ZERO);
    let io = IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let crs = Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&io]));
    to_bytes(&Device::new(Path::new("PEVT"), vec![&hid, &uid, &crs]))
}

/// `\_SB.VRxx`; `create_acpi_tables` has checked that the window is below 4 GiB and that
/// `index` has two hex digits' worth of devices.
fn virtio_mmio(index: usize, desc: &VirtioMmioDesc) -> Vec<u8> {
    let hid = Name::new(Path::new("_HID"), &"LNRO0005");
    let uid = Name::new(Path::new("_UID"), &(index as u32));
    // Virtio-mmio DMA is cache coherent.
    let cca = Name::new(Path::new("_CCA"), &aml::ONE);
    let window = Memory32Fixed::new(true, desc.addr as u32, desc.len as u32);
    let irq = Interrupt::new(true, true, false, false, desc.gsi);
    let crs = Name::new(
        Path::new("_CRS"),
        &ResourceTemplate::new(vec![&window, &irq]),
    );
    let name = format!("VR{:02X}", index & 0xff);
    to_bytes(&Device::new(Path::new(&name), vec![&hid, &uid, &cca, &crs]))
}
