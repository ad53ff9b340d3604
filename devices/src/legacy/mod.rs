//! Legacy and platform devices: serial port, i8042, boot timer, ACPI power management, the
//! generic event device (power button) and pvpanic.

pub mod acpi_pm;
pub mod boot_timer;
pub mod cmos;
pub mod ged;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
