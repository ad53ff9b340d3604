//! Tests that read the tables back out of guest memory the way a guest would.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::layout::{self, ACPI_PM_PORT, GED_ADDR, IOAPIC_ADDR, LAPIC_ADDR};

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

fn virtio_devices(count: usize) -> Vec<VirtioMmioDesc> {
    (0..count)
        .map(|i| VirtioMmioDesc {
            addr: layout::virtio_mmio_addr(i),
            len: layout::VIRTIO_MMIO_SIZE,
            gsi: layout::virtio_gsi(i),
        })
        .collect()
}

fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    bytes
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// A system description table read back from guest memory.
struct Table {
    addr: u64,
    bytes: Vec<u8>,
}

impl Table {
    fn read(mem: &GuestMemoryMmap, addr: u64) -> Table {
        let header = read_bytes(mem, addr, 36);
        let len = u32_at(&header, 4) as usize;
        assert!(len >= 36, "table at {addr:#x} has length {len}");
        Table {
            addr,
            bytes: read_bytes(mem, addr, len),
        }
    }

    fn signature(&self) -> &[u8] {
        &self.bytes[0..4]
    }
}

/// Everything a guest reaches from the RSDP.
struct Parsed {
    rsdp: Vec<u8>,
    xsdt: Table,
    fadt: Table,
    madt: Table,
    dsdt: Table,
}

fn build_and_parse(cfg: &AcpiConfig) -> Parsed {
    let mem = guest_memory();
    let rsdp_addr = create_acpi_tables(&mem, cfg).unwrap();
    assert_eq!(rsdp_addr, GuestAddress(layout::ACPI_RSDP_ADDR));
    let rsdp = read_bytes(&mem, rsdp_addr.0, 36);
    let xsdt = Table::read(&mem, u64_at(&rsdp, 24));
    let entries: Vec<Table> = xsdt.bytes[36..]
        .chunks(8)
        .map(|entry| Table::read(&mem, u64::from_le_bytes(entry.try_into().unwrap())))
        .collect();
    let mut fadt = None;
    let mut madt = None;
    for table in entries {
        match table.signature() {
            b"FACP" => fadt = Some(table),
            b"APIC" => madt = Some(table),
            other => panic!("unexpected table {other:?} in the XSDT"),
        }
    }
    let fadt = fadt.expect("XSDT lists no FADT");
    let dsdt = Table::read(&mem, u64_at(&fadt.bytes, 140));
    Parsed {
        rsdp,
        xsdt,
        fadt,
        madt: madt.expect("XSDT lists no MADT"),
        dsdt,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn default_cfg(devices: &[VirtioMmioDesc]) -> AcpiConfig<'_> {
    AcpiConfig {
        num_cpus: 2,
        virtio_mmio: devices,
        serial: true,
    }
}

#[test]
fn rsdp_when_created_then_signature_revision_and_both_checksums_valid() {
    let parsed = build_and_parse(&default_cfg(&[]));
    assert_eq!(&parsed.rsdp[0..8], b"RSD PTR ");
    assert_eq!(parsed.rsdp[15], 2, "revision");
    assert_eq!(u32_at(&parsed.rsdp, 20), 36, "length");
    assert_eq!(sum(&parsed.rsdp[0..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(sum(&parsed.rsdp), 0, "extended checksum");
}

#[test]
fn xsdt_when_created_then_lists_fadt_and_madt_and_fadt_points_at_dsdt() {
    let parsed = build_and_parse(&default_cfg(&[]));
    assert_eq!(parsed.xsdt.signature(), b"XSDT");
    assert_eq!(parsed.xsdt.bytes.len(), 36 + 2 * 8);
    assert_eq!(parsed.fadt.signature(), b"FACP");
    assert_eq!(parsed.madt.signature(), b"APIC");
    assert_eq!(parsed.dsdt.signature(), b"DSDT");
    assert_eq!(u32_at(&parsed.fadt.bytes, 40), 0, "32-bit DSDT unused");
}

#[test]
fn tables_when_created_then_every_checksum_sums_to_zero_and_all_fit_in_acpi_area() {
    let devices = virtio_devices(3);
    let parsed = build_and_parse(&default_cfg(&devices));
    for table in [&parsed.xsdt, &parsed.fadt, &parsed.madt, &parsed.dsdt] {
        let name = String::from_utf8_lossy(table.signature()).into_owned();
        assert_eq!(sum(&table.bytes), 0, "{name} checksum");
        assert!(
            table.addr >= layout::ACPI_RSDP_ADDR + 36,
            "{name} overlaps RSDP"
        );
        assert!(
            table.addr + table.bytes.len() as u64 <= layout::ACPI_TABLES_END,
            "{name} ends past the ACPI area"
        );
        assert_eq!(table.addr % 8, 0, "{name} alignment");
        assert_eq!(&table.bytes[10..16], &OEM_ID, "{name} OEM ID");
    }
}

#[test]
fn fadt_when_created_then_hardware_reduced_with_pm_register_and_reset() {
    let fadt = build_and_parse(&default_cfg(&[])).fadt.bytes;
    assert_eq!(fadt.len(), 276, "ACPI 6.x FADT length");
    assert_eq!(fadt[8], 6, "major revision");
    assert_eq!(fadt[131], 5, "minor revision");
    let flags = u32_at(&fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    let port = u64::from(ACPI_PM_PORT);
    // GAS: SystemIO, 8 bits wide, offset 0, byte access, address.
    let mut pm_gas = vec![1, 8, 0, 1];
    pm_gas.extend_from_slice(&port.to_le_bytes());
    assert_eq!(&fadt[116..128], &pm_gas[..], "RESET_REG");
    assert_eq!(fadt[128], 0x01, "RESET_VALUE");
    assert_eq!(&fadt[244..256], &pm_gas[..], "SLEEP_CONTROL_REG");
    assert_eq!(&fadt[256..268], &pm_gas[..], "SLEEP_STATUS_REG");
    assert_eq!(&fadt[268..276], b"TINYVMM\0", "hypervisor vendor");
    let boot_arch = u16::from_le_bytes([fadt[109], fadt[110]]);
    assert_ne!(boot_arch & (1 << 1), 0, "8042 present");
}

/// (type, bytes) of each MADT interrupt controller structure.
fn madt_structures(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = 44;
    while offset < madt.len() {
        let len = madt[offset + 1] as usize;
        assert!(len >= 2, "zero-length MADT structure at {offset}");
        out.push((madt[offset], madt[offset..offset + len].to_vec()));
        offset += len;
    }
    assert_eq!(offset, madt.len(), "MADT structures overrun the table");
    out
}

#[test]
fn madt_when_n_cpus_then_n_enabled_local_apics_and_one_ioapic() {
    for num_cpus in [1u8, 2, 7, 32, 255] {
        let cfg = AcpiConfig {
            num_cpus,
            ..default_cfg(&[])
        };
        let madt = build_and_parse(&cfg).madt.bytes;
        assert_eq!(u32_at(&madt, 36), LAPIC_ADDR as u32);
        assert_eq!(u32_at(&madt, 40) & 1, 1, "PCAT_COMPAT");
        let structures = madt_structures(&madt);
        let lapics: Vec<_> = structures.iter().filter(|(t, _)| *t == 0).collect();
        assert_eq!(lapics.len(), usize::from(num_cpus));
        for (cpu, (_, lapic)) in lapics.iter().enumerate() {
            assert_eq!(lapic[2] as usize, cpu, "processor UID");
            assert_eq!(lapic[3] as usize, cpu, "APIC ID");
            assert_eq!(u32_at(lapic, 4), 1, "enabled");
        }
        let ioapics: Vec<_> = structures.iter().filter(|(t, _)| *t == 1).collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(u32_at(&ioapics[0].1, 4), IOAPIC_ADDR as u32);
        assert_eq!(u32_at(&ioapics[0].1, 8), 0, "GSI base");
    }
}

/// The AML encoding of a `Memory32Fixed (ReadWrite, addr, len)` descriptor.
fn memory32_fixed(addr: u64, len: u64) -> Vec<u8> {
    let mut bytes = vec![0x86, 9, 0, 1];
    bytes.extend_from_slice(&(addr as u32).to_le_bytes());
    bytes.extend_from_slice(&(len as u32).to_le_bytes());
    bytes
}

/// The AML encoding of an edge, active-high, exclusive `Interrupt (ResourceConsumer)`.
fn interrupt(gsi: u32) -> Vec<u8> {
    let mut bytes = vec![0x89, 6, 0, 0b0011, 1];
    bytes.extend_from_slice(&gsi.to_le_bytes());
    bytes
}

#[test]
fn dsdt_when_virtio_devices_then_each_has_lnro0005_window_and_gsi() {
    let devices = virtio_devices(layout::MAX_VIRTIO_DEVICES);
    let dsdt = build_and_parse(&default_cfg(&devices)).dsdt.bytes;
    assert_eq!(
        dsdt.windows(9).filter(|w| w == b"LNRO0005\0").count(),
        devices.len()
    );
    for (i, dev) in devices.iter().enumerate() {
        assert!(
            contains(&dsdt, format!("VR{i:02X}").as_bytes()),
            "VR{i:02X}"
        );
        assert!(
            contains(&dsdt, &memory32_fixed(dev.addr, dev.len)),
            "window {i}"
        );
        assert!(contains(&dsdt, &interrupt(dev.gsi)), "gsi {i}");
    }
}

#[test]
fn dsdt_when_created_then_has_s5_power_button_and_ged() {
    let dsdt = build_and_parse(&default_cfg(&[])).dsdt.bytes;
    for name in [
        &b"_S5_"[..],
        b"PWRB",
        b"GED_",
        b"ACPI0013\0",
        b"_EVT",
        b"GDAT",
        b"KBD_",
    ] {
        assert!(contains(&dsdt, name), "{}", String::from_utf8_lossy(name));
    }
    assert!(contains(&dsdt, &interrupt(layout::GED_GSI)));
    // Linux's GED driver rejects any non-interrupt resource in the GED's _CRS.
    let mut ged_crs = vec![0x08, b'_', b'C', b'R', b'S', 0x11, 0x0e, 0x0a, 0x0b];
    ged_crs.extend(interrupt(layout::GED_GSI));
    ged_crs.extend([0x79, 0x00]);
    assert!(
        contains(&dsdt, &ged_crs),
        "GED _CRS holds exactly one interrupt"
    );
    assert!(!contains(
        &dsdt,
        &memory32_fixed(GED_ADDR, layout::GED_SIZE)
    ));
    // OperationRegion (GDST, SystemMemory, GED_ADDR, 1).
    let mut region = vec![0x5b, 0x80, b'G', b'D', b'S', b'T', 0x00, 0x0c];
    region.extend((GED_ADDR as u32).to_le_bytes());
    region.push(0x01);
    assert!(contains(&dsdt, &region));
    // _S5_ package: PackageOp, length, 4 elements, BytePrefix 5.
    assert!(contains(
        &dsdt,
        &[b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05]
    ));
}

#[test]
fn dsdt_when_serial_disabled_then_no_com1() {
    let with = build_and_parse(&default_cfg(&[])).dsdt.bytes;
    let without = build_and_parse(&AcpiConfig {
        serial: false,
        ..default_cfg(&[])
    })
    .dsdt
    .bytes;
    assert!(contains(&with, b"COM1"));
    assert!(contains(&with, &interrupt(layout::SERIAL_GSI)));
    assert!(!contains(&without, b"COM1"));
}

#[test]
fn create_when_too_many_devices_then_too_many_devices_error() {
    let mut devices = virtio_devices(layout::MAX_VIRTIO_DEVICES);
    devices.push(devices[0]);
    let err = create_acpi_tables(&guest_memory(), &default_cfg(&devices)).unwrap_err();
    assert!(
        matches!(err, AcpiError::TooManyDevices { count: 15, max: 14 }),
        "{err}"
    );
}

#[test]
fn create_when_device_window_crosses_4g_then_out_of_range_error() {
    let devices = [VirtioMmioDesc {
        addr: 0xFFFF_F000,
        len: 0x2000,
        gsi: 10,
    }];
    let err = create_acpi_tables(&guest_memory(), &default_cfg(&devices)).unwrap_err();
    assert!(
        matches!(err, AcpiError::DeviceOutOfRange { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn create_when_gsi_past_ioapic_then_invalid_gsi_error() {
    let mut devices = virtio_devices(2);
    devices[1].gsi = 24;
    let err = create_acpi_tables(&guest_memory(), &default_cfg(&devices)).unwrap_err();
    assert!(
        matches!(
            err,
            AcpiError::InvalidGsi {
                index: 1,
                gsi: 24,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn create_when_no_cpus_then_error() {
    let cfg = AcpiConfig {
        num_cpus: 0,
        ..default_cfg(&[])
    };
    let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();
    assert!(matches!(err, AcpiError::NoCpus), "{err}");
}

#[test]
fn create_when_memory_does_not_cover_acpi_area_then_write_error() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
    let err = create_acpi_tables(&mem, &default_cfg(&[])).unwrap_err();
    assert!(matches!(err, AcpiError::WriteTable { .. }), "{err}");
}

#[test]
fn table_writer_when_table_passes_end_then_tables_too_large() {
    let mem = guest_memory();
    let mut writer = TableWriter::new(&mem, 0x1000, 0x1100);
    assert_eq!(writer.write("AAAA", &[1; 0x80]).unwrap(), 0x1000);
    assert_eq!(writer.write("BBBB", &[2; 0x70]).unwrap(), 0x1080);
    let err = writer.write("CCCC", &[3; 0x11]).unwrap_err();
    assert!(
        matches!(
            err,
            AcpiError::TablesTooLarge {
                table: "CCCC",
                addr: 0x10f0,
                len: 0x11,
                end: 0x1100
            }
        ),
        "{err}"
    );
    assert_eq!(
        read_bytes(&mem, 0x10f0, 1),
        [0],
        "nothing written past the end"
    );
}

/// Runs `iasl` with `args` in `dir`; `None` if iasl is not installed.
fn iasl(dir: &std::path::Path, args: &[&str]) -> Option<std::process::Output> {
    acpica_tool("iasl", dir, args)
}

/// Runs an ACPICA tool (package acpica-tools); `None` if it is not installed.
fn acpica_tool(tool: &str, dir: &std::path::Path, args: &[&str]) -> Option<std::process::Output> {
    match std::process::Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

#[test]
fn tables_when_disassembled_by_iasl_then_clean_and_dsdt_recompiles_without_errors() {
    let devices = virtio_devices(3);
    let parsed = build_and_parse(&default_cfg(&devices));
    let dir = tempfile::tempdir().unwrap();
    let tables = [
        ("dsdt", &parsed.dsdt),
        ("facp", &parsed.fadt),
        ("apic", &parsed.madt),
        ("xsdt", &parsed.xsdt),
    ];
    for (name, table) in tables {
        std::fs::write(dir.path().join(format!("{name}.dat")), &table.bytes).unwrap();
        let Some(out) = iasl(dir.path(), &["-d", &format!("{name}.dat")]) else {
            eprintln!(
                "SKIPPED: iasl not installed (apt-get install acpica-tools); AML not validated"
            );
            return;
        };
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "iasl -d {name}: {log}");
        assert!(!log.contains("Error"), "iasl -d {name}: {log}");
    }
    let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
    for expected in [
        "Name (_S5, Package (0x04)",
        "Name (_HID, EisaId (\"PNP0C0C\")",
        "Name (_HID, \"ACPI0013\"",
        "OperationRegion (GDST, SystemMemory, 0xD0001000, One)",
        "Notify (\\_SB.PWRB, 0x80)",
        "Device (VR02)",
        "0xD0004000,         // Address Base",
        "0x0000000C,",
    ] {
        assert!(dsl.contains(expected), "missing {expected:?} in:\n{dsl}");
    }
    let out = iasl(dir.path(), &["-p", "recompiled", "dsdt.dsl"]).unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iasl dsdt.dsl: {log}");
    assert!(
        log.contains(" 0 Errors, 0 Warnings"),
        "iasl dsdt.dsl: {log}"
    );
}

/// Runs the DSDT's `_EVT` in ACPICA's AML interpreter with the GED event byte preset to
/// `events`; returns the interpreter's output, or `None` if acpiexec is not installed.
fn run_ged_evt(events: u8) -> Option<String> {
    let parsed = build_and_parse(&default_cfg(&virtio_devices(1)));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dsdt.dat"), &parsed.dsdt.bytes).unwrap();
    // acpiexec emulates the SystemMemory region; -fi presets the GDAT field in it.
    std::fs::write(
        dir.path().join("init"),
        format!("\\_SB_.GED_.GDAT {events}\n"),
    )
    .unwrap();
    let batch = "evaluate \\_SB_.GED_._EVT 5; evaluate \\_S5_";
    let out = acpica_tool(
        "acpiexec",
        dir.path(),
        &["-fi", "init", "-b", batch, "dsdt.dat"],
    )?;
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "acpiexec: {log}");
    assert!(!log.contains("AE_"), "AML error: {log}");
    Some(log)
}

#[test]
fn ged_evt_when_power_button_bit_set_then_aml_notifies_pwrb_0x80() {
    let Some(log) = run_ged_evt(EVENT_POWER_BUTTON_BIT) else {
        eprintln!("SKIPPED: acpiexec not installed (apt-get install acpica-tools); AML not run");
        return;
    };
    assert!(
        log.contains("Received a Device Notify on [PWRB]") && log.contains("Value 0x80"),
        "no power button notify: {log}"
    );
    assert!(
        log.contains("[Integer] = 0000000000000005"),
        "_S5_ SLP_TYP: {log}"
    );
}

#[test]
fn ged_evt_when_no_event_pending_then_no_notify() {
    let Some(log) = run_ged_evt(0) else {
        eprintln!("SKIPPED: acpiexec not installed (apt-get install acpica-tools); AML not run");
        return;
    };
    assert!(!log.contains("Notify"), "unexpected notify: {log}");
}

/// Bit 0 of the GED event byte (`devices::legacy::ged::EVENT_POWER_BUTTON`).
const EVENT_POWER_BUTTON_BIT: u8 = 1;

#[test]
fn dsdt_when_built_then_pvpanic_device_on_its_port() {
    let devices = virtio_devices(1);
    let dsdt = build_and_parse(&default_cfg(&devices)).dsdt.bytes;
    assert!(contains(&dsdt, b"QEMU0001\0"));
    assert!(contains(&dsdt, b"PEVT"));
    // IO (Decode16, 0x505, 0x505, 1, 1)
    let port = layout::PVPANIC_PORT.to_le_bytes();
    let io = [0x47, 0x01, port[0], port[1], port[0], port[1], 0x01, 0x01];
    assert!(contains(&dsdt, &io), "pvpanic IO descriptor");
}
