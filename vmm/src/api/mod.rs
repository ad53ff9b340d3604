//! The per-VM control API: HTTP/1.1 + JSON over a unix socket (`curl --unix-socket`).
//!
//! [`http`] parses and routes one request against a [`VmApi`] (pure, unit-tested against a
//! fake VM); [`server`] owns the socket and its threads; [`client`] is what the CLI uses.

pub mod client;
pub mod http;
pub mod live;
pub mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the VM is doing, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Paused,
    /// The power button was pressed; the grace period runs.
    Stopping,
}

/// `GET /vm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub name: String,
    pub state: VmState,
    pub pid: u32,
    pub uptime_ms: u64,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: String,
    /// When the guest wrote the boot-timer port, in µs since tinyvmm started.
    pub boot_timer_us: Option<u64>,
    /// Guest addresses from the config, one per network interface that has one.
    pub addresses: Vec<String>,
    /// Per-device counters, keyed by device (e.g. `net:tap-vm1`).
    pub devices: BTreeMap<String, serde_json::Value>,
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The action does not fit the VM's current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The action was tried and failed (500).
    #[error("{0}")]
    Failed(String),
}

/// What the control socket can do to a VM. Implemented by the running VM and by test fakes.
pub trait VmApi: Send + Sync {
    fn status(&self) -> VmStatus;
    /// What SIGTERM does: press the power button and start the grace period.
    fn shutdown(&self) -> Result<(), ApiError>;
    /// Stop the VM now.
    fn kill(&self) -> Result<(), ApiError>;
    /// Park every vCPU outside KVM_RUN.
    fn pause(&self) -> Result<(), ApiError>;
    fn resume(&self) -> Result<(), ApiError>;
}
