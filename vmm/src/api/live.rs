//! The running VM behind the control socket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use devices::virtio::net::NetCounters;
use vmconfig::VmConfig;

use super::{ApiError, VmApi, VmState, VmStatus};
use crate::control::{ApiRequest, ControlRequests};
use crate::pause::VcpuPause;

/// What `GET /vm` and the actions need from a live run.
pub struct LiveVm {
    name: String,
    vcpus: u32,
    memory_mib: u64,
    kernel: String,
    addresses: Vec<String>,
    start: Instant,
    pause: Arc<VcpuPause>,
    requests: Arc<ControlRequests>,
    net: Vec<(String, Arc<NetCounters>)>,
}

impl LiveVm {
    pub fn new(
        cfg: &VmConfig,
        start: Instant,
        pause: Arc<VcpuPause>,
        requests: Arc<ControlRequests>,
        net: Vec<(String, Arc<NetCounters>)>,
    ) -> Self {
        Self {
            name: cfg.name.clone(),
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            kernel: cfg.kernel.path.display().to_string(),
            addresses: cfg
                .network
                .iter()
                .filter_map(|n| n.address.as_ref().map(|a| a.to_string()))
                .collect(),
            start,
            pause,
            requests,
            net,
        }
    }
}

impl VmApi for LiveVm {
    fn status(&self) -> VmStatus {
        let state = if self.requests.stopping() {
            VmState::Stopping
        } else if self.pause.is_paused() {
            VmState::Paused
        } else {
            VmState::Running
        };
        let mut devices = BTreeMap::new();
        for (tap, c) in &self.net {
            let s = c.snapshot();
            devices.insert(
                format!("net:{tap}"),
                serde_json::json!({
                    "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes, "rx_dropped": s.rx_dropped,
                    "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes, "tx_dropped": s.tx_dropped,
                    "bad_descriptors": s.bad_descriptors,
                }),
            );
        }
        VmStatus {
            name: self.name.clone(),
            state,
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            kernel: self.kernel.clone(),
            boot_timer_us: crate::timing::boot_timer_us(),
            addresses: self.addresses.clone(),
            devices,
        }
    }

    fn shutdown(&self) -> Result<(), ApiError> {
        // A paused guest cannot see the power button: run it again first.
        let _ = self.pause.resume();
        self.requests.send(ApiRequest::Shutdown);
        Ok(())
    }

    fn kill(&self) -> Result<(), ApiError> {
        self.requests.send(ApiRequest::Kill);
        Ok(())
    }

    fn pause(&self) -> Result<(), ApiError> {
        if self.requests.stopping() {
            return Err(ApiError::Conflict("the VM is shutting down".into()));
        }
        self.pause.pause().map_err(pause_error)
    }

    fn resume(&self) -> Result<(), ApiError> {
        self.pause.resume().map_err(pause_error)
    }
}

fn pause_error(e: crate::pause::PauseError) -> ApiError {
    match e {
        crate::pause::PauseError::Timeout { .. } => ApiError::Failed(e.to_string()),
        _ => ApiError::Conflict(e.to_string()),
    }
}
