//! ACPI tables (owned by the ACPI engineer).
