//! x86_64 machine setup for tinyvmm: guest physical layout, guest memory, kernel loading and
//! boot parameters, vCPU boot state, CPUID, MP table, ACPI tables.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod vcpu;
