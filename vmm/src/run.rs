//! Runs a built machine: starts the vCPUs, then drives the event loop on the calling thread
//! until the guest powers off, reboots, crashes or is stopped.

use std::sync::{Arc, Mutex};

use event_manager::SubscriberOps;
use std::time::Duration;

use nix::sys::signal::SigSet;

use crate::builder::Machine;
use crate::control::{Control, ControlError};
use crate::exit_code::RunExit;

/// Errors while running the VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("set up control events")]
    Control(#[from] ControlError),
    #[error("start vCPU thread {id}")]
    SpawnVcpu {
        id: u8,
        #[source]
        source: std::io::Error,
    },
    #[error("wait for events")]
    EventLoop(#[source] event_manager::Error),
}

/// Starts the machine and returns how it ended.
pub fn run(mut machine: Machine, mask: &SigSet, grace: Duration) -> Result<RunExit, RunError> {
    let button = machine.platform.power_button(machine.guest_acpi);
    let control = Arc::new(Mutex::new(Control::new(
        mask,
        machine.exit.clone(),
        button,
        grace,
    )?));
    machine.subscribers.add_subscriber(control.clone());

    for vcpu in machine.vcpus.drain(..) {
        let id = vcpu.id;
        vcpu.spawn()
            .map_err(|source| RunError::SpawnVcpu { id, source })?;
    }

    loop {
        let timeout = lock(&control).timeout_ms();
        machine
            .subscribers
            .run_with_timeout(timeout)
            .map_err(RunError::EventLoop)?;
        let mut c = lock(&control);
        c.check_deadline();
        if let Some(outcome) = c.outcome() {
            return Ok(outcome);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
