//! ACPI tables for a hardware-reduced x86_64 microVM.
//!
//! The guest finds the RSDP by scanning `0xE0000..0x100000` (or through the boot protocol's
//! `acpi_rsdp_addr`). From there: RSDP → XSDT → {FADT → DSDT, MADT}. The FADT declares a
//! hardware-reduced platform whose only fixed hardware is one byte at I/O port 0x3c0 used as
//! sleep control, sleep status and reset register (`devices::legacy::acpi_pm`). The DSDT
//! describes the power button, the Generic Event Device that delivers its presses
//! (`devices::legacy::ged`), the virtio-mmio devices (`LNRO0005`, which is how kernels without
//! `virtio_mmio.device=` command-line support find them), COM1 and the i8042.
//!
//! All tables are written into `[ACPI_RSDP_ADDR, ACPI_TABLES_END)`, RSDP first.
//!
//! What a hardware-reduced FADT changes in a Linux guest (seen with Debian's 6.1 kernel):
//! - There is no legacy PIC and no PIT calibration: the TSC frequency must come from
//!   kvmclock or CPUID (0x15/0x16), or the kernel marks the TSC unstable and can stall while
//!   calibrating the local APIC timer.
//! - Poweroff writes 0x80 (clear `WAK_STS`) and then 0x34 to port 0x3c0.
//! - Reboot defaults to EFI and then a real-mode BIOS jump (a triple fault without firmware);
//!   `reboot=a` writes the reset value 0x01 to port 0x3c0, `reboot=k` pulses the i8042.
//! - ISA IRQs are not pre-mapped: COM1 and the i8042 get dynamic Linux IRQ numbers on IOAPIC
//!   pins 4 and 1 from their `_CRS`.

mod dsdt;
mod tables;
#[cfg(test)]
mod tests;

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{ACPI_RSDP_ADDR, ACPI_TABLES_END, IOAPIC_PINS, MAX_VIRTIO_DEVICES};

/// OEM ID written into every table header.
pub const OEM_ID: [u8; 6] = *b"TINYVM";
/// OEM table ID written into every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"TINYVMM ";
/// OEM revision written into every table header.
pub const OEM_REVISION: u32 = 1;

/// One virtio-mmio device as the guest should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDesc {
    /// Guest physical base of the device's register window (below 4 GiB).
    pub addr: u64,
    /// Length of the register window.
    pub len: u64,
    /// The device's GSI (an IOAPIC pin, edge-triggered, active high).
    pub gsi: u32,
}

/// What the ACPI tables describe.
#[derive(Debug, Clone, Copy)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs; vCPU `i` has local APIC ID `i`.
    pub num_cpus: u8,
    /// Virtio-mmio devices, in order: device `i` becomes `\_SB.VRxx` with `_UID` `i`.
    pub virtio_mmio: &'a [VirtioMmioDesc],
    /// Whether COM1 is present (and described in the DSDT).
    pub serial: bool,
}

/// Why the ACPI tables could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The machine has no vCPU.
    #[error("ACPI tables need at least one vCPU")]
    NoCpus,
    /// More virtio-mmio devices than the layout has slots for.
    #[error("{count} virtio-mmio devices requested, at most {max} are supported")]
    TooManyDevices {
        /// Devices requested.
        count: usize,
        /// Devices supported.
        max: usize,
    },
    /// A device window that a 32-bit ACPI memory descriptor cannot express.
    #[error("virtio-mmio device {index} at {addr:#x} with length {len:#x} is not below 4 GiB")]
    DeviceOutOfRange {
        /// Index of the device in [`AcpiConfig::virtio_mmio`].
        index: usize,
        /// Its base address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// A device GSI that is not an IOAPIC pin.
    #[error("virtio-mmio device {index} uses GSI {gsi}, the IOAPIC has pins 0..{pins}")]
    InvalidGsi {
        /// Index of the device in [`AcpiConfig::virtio_mmio`].
        index: usize,
        /// The rejected GSI.
        gsi: u32,
        /// Number of IOAPIC pins.
        pins: u32,
    },
    /// The tables do not fit in the ACPI area.
    #[error("ACPI table {table} ({len} bytes at {addr:#x}) does not fit below {end:#x}")]
    TablesTooLarge {
        /// Signature of the table that did not fit.
        table: &'static str,
        /// Where it would have started.
        addr: u64,
        /// Its length.
        len: usize,
        /// End of the ACPI area.
        end: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("cannot write ACPI table {table} at {addr:#x}")]
    WriteTable {
        /// Signature of the table.
        table: &'static str,
        /// Where it was written.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Builds the ACPI tables for `cfg` and writes them into guest memory.
///
/// Returns the guest physical address of the RSDP (always `ACPI_RSDP_ADDR`), for the boot
/// protocol's `acpi_rsdp_addr` field.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    validate(cfg)?;
    let mut writer = TableWriter::new(mem, ACPI_RSDP_ADDR, ACPI_TABLES_END);
    // The RSDP goes first, at the fixed address the guest scans; it is written last because
    // it points at the XSDT, whose place is known only once everything else is placed.
    let rsdp_addr = writer.reserve("RSDP", tables::RSDP_LEN)?;

    let dsdt_addr = writer.write("DSDT", &dsdt::create_dsdt(cfg))?;
    let fadt_addr = writer.write("FACP", &tables::create_fadt(dsdt_addr))?;
    let madt_addr = writer.write("APIC", &tables::create_madt(cfg.num_cpus))?;
    let xsdt_addr = writer.write("XSDT", &tables::create_xsdt(&[fadt_addr, madt_addr]))?;

    writer.write_at("RSDP", rsdp_addr, &tables::create_rsdp(xsdt_addr))?;
    Ok(GuestAddress(rsdp_addr))
}

fn validate(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if cfg.virtio_mmio.len() > MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyDevices {
            count: cfg.virtio_mmio.len(),
            max: MAX_VIRTIO_DEVICES,
        });
    }
    for (index, dev) in cfg.virtio_mmio.iter().enumerate() {
        let end = dev.addr.checked_add(dev.len);
        if dev.len == 0 || end.is_none_or(|end| end > 1 << 32) {
            return Err(AcpiError::DeviceOutOfRange {
                index,
                addr: dev.addr,
                len: dev.len,
            });
        }
        if dev.gsi >= IOAPIC_PINS {
            return Err(AcpiError::InvalidGsi {
                index,
                gsi: dev.gsi,
                pins: IOAPIC_PINS,
            });
        }
    }
    Ok(())
}

/// Places tables one after another in `[next, end)`, each 16-byte aligned.
struct TableWriter<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
    end: u64,
}

/// Alignment of every table (the RSDP must be 16-byte aligned; the rest need 8).
const TABLE_ALIGN: u64 = 16;

impl<'a> TableWriter<'a> {
    fn new(mem: &'a GuestMemoryMmap, start: u64, end: u64) -> Self {
        Self {
            mem,
            next: start,
            end,
        }
    }

    /// Claims `len` bytes for `table` and returns their address.
    fn reserve(&mut self, table: &'static str, len: usize) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        let fits = addr
            .checked_add(len as u64)
            .filter(|table_end| *table_end <= self.end);
        let Some(table_end) = fits else {
            return Err(AcpiError::TablesTooLarge {
                table,
                addr,
                len,
                end: self.end,
            });
        };
        self.next = table_end;
        Ok(addr)
    }

    /// Places `bytes` after the previous table and returns their address.
    fn write(&mut self, table: &'static str, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.reserve(table, bytes.len())?;
        self.write_at(table, addr, bytes)?;
        Ok(addr)
    }

    fn write_at(&self, table: &'static str, addr: u64, bytes: &[u8]) -> Result<(), AcpiError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::WriteTable {
                table,
                addr,
                source,
            })
    }
}

/// Serializes a table or AML object.
fn to_bytes(aml: &dyn acpi_tables::Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}
