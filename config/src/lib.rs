//! vmconfig: the VM config file (`vmN.json`) shared by tinyvmm, netctl and storage.
//!
//! - [`types`]: serde types ([`VmConfig`] and friends), `deny_unknown_fields` everywhere.
//! - [`parse`](parse()) / [`load`]: text or file -> validated config; every error names the JSON path
//!   and the line:column of the offending value.
//! - [`validate`](validate()) / [`validate_with`]: the one cross-field check, returning every
//!   problem; [`Checks::NO_FILES`] skips file-system checks for tools that run elsewhere.
//! - [`check_fleet`]: collisions between several VMs on one host (names, TAPs, MACs, subnets).
//! - [`lock`]: the run lock that says whether a VM is running.
//! - [`exit`]: the exit-status contract of all three tools.

pub mod error;
pub mod exit;
pub mod fleet;
pub mod lock;
pub mod parse;
pub mod position;
pub mod types;
pub mod validate;

pub use error::{ConfigError, Problem};
pub use fleet::{check_fleet, FleetProblem};
pub use lock::{default_run_dir, is_running, LockError, RunLock};
pub use parse::{deserialize, load, load_with, parse, parse_unchecked, parse_with};
pub use types::{
    CacheConfig, Ipv4Cidr, KernelConfig, MacAddr, MmioDiscovery, NetConfig, SerialConfig,
    ShareConfig, StorageConfig, VmConfig, VolumeConfig, DEFAULT_CMDLINE,
};
pub use validate::{validate, validate_with, Checks};

#[cfg(test)]
mod tests;
