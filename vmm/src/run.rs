//! Runs a built machine: starts the vCPUs, then drives the event loop on the calling thread
//! until the guest powers off, reboots, crashes or is stopped.

use std::sync::{Arc, Mutex};

use event_manager::SubscriberOps;
use std::time::Duration;

use nix::sys::signal::SigSet;

use crate::builder::Machine;
use crate::control::{Control, ControlError, ControlRequests};
use crate::exit_code::RunExit;
use crate::pause::VcpuPause;

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
    #[error("install the vCPU kick signal handler")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    #[error("wait for events")]
    EventLoop(#[source] event_manager::Error),
}

/// What the control socket shares with the run.
pub struct RunShared {
    pub pause: Arc<VcpuPause>,
    pub requests: Arc<ControlRequests>,
}

/// Starts the machine and returns how it ended.
pub fn run(
    mut machine: Machine,
    mask: &SigSet,
    grace: Duration,
    shared: &RunShared,
) -> Result<RunExit, RunError> {
    let button = machine.platform.power_button(machine.guest_acpi);
    let control = Control::new(mask, machine.exit.clone(), button, grace)?
        .with_requests(shared.requests.clone());
    let control = Arc::new(Mutex::new(control));
    machine.subscribers.add_subscriber(control.clone());

    crate::vcpu::install_kick_handler().map_err(RunError::KickHandler)?;
    for vcpu in machine.vcpus.drain(..) {
        let id = vcpu.id;
        match vcpu.spawn(shared.pause.clone()) {
            Ok(t) => shared.pause.add_thread(t),
            Err(source) => {
                crate::vcpu::stop_all(
                    &machine.exit,
                    shared.pause.take_threads(),
                    VCPU_STOP_TIMEOUT,
                );
                return Err(RunError::SpawnVcpu { id, source });
            }
        }
    }

    let outcome = serve(&mut machine, &control);
    // A paused VM that is stopped (kill, second signal) must not leave vCPUs parked forever.
    let _ = shared.pause.resume();
    let left = crate::vcpu::stop_all(
        &machine.exit,
        shared.pause.take_threads(),
        VCPU_STOP_TIMEOUT,
    );
    if left > 0 {
        log::warn!("{left} vCPU thread(s) did not stop within {VCPU_STOP_TIMEOUT:?}");
    }
    outcome
}

/// How long stopping waits for the vCPU threads to leave KVM_RUN.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The event loop: devices and control until control reports an outcome.
fn serve(machine: &mut Machine, control: &Arc<Mutex<Control>>) -> Result<RunExit, RunError> {
    loop {
        let timeout = lock(control).timeout_ms();
        machine
            .subscribers
            .run_with_timeout(timeout)
            .map_err(RunError::EventLoop)?;
        let mut c = lock(control);
        c.check_deadline();
        if let Some(outcome) = c.outcome() {
            return Ok(outcome);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
