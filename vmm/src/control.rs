//! The main thread's control events: host signals, the guest's exit requests and the
//! shutdown grace period.
//!
//! SIGTERM or SIGINT asks the guest to stop once and starts the grace period; a second
//! signal, or the end of the grace period, stops the VM hard. The request is the ACPI power
//! button for a guest that uses ACPI, and Ctrl-Alt-Del through the i8042 for one booted with
//! `acpi=off` (see `Platform::power_button`). Linux turns Ctrl-Alt-Del into a reboot (or, once
//! init disabled that, SIGINT to init; busybox init and systemd then reboot cleanly), so a
//! reboot or reset the guest asks for after a stop request ends the run as a stop
//! ([`RunExit::Poweroff`]), not as [`RunExit::Reboot`]. The signals are blocked in every
//! thread and read from a signalfd, so no handler runs in signal context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::exit::{ExitKind, ExitRequest};
use event_manager::{EventOps, Events, MutEventSubscriber};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::exit_code::RunExit;

const TOKEN_SIGNAL: u32 = 1;
const TOKEN_EXIT: u32 = 2;
const TOKEN_API: u32 = 3;

/// What the control socket asks of the main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRequest {
    /// Same as SIGTERM.
    Shutdown,
    /// Stop now (exit status 5, as after the grace period).
    Kill,
}

/// The control socket's way into the main loop: a queue and an eventfd that wakes it. Also
/// tells the socket whether the power button has been pressed.
pub struct ControlRequests {
    evt: EventFd,
    queue: Mutex<Vec<ApiRequest>>,
    stopping: AtomicBool,
}

impl ControlRequests {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            queue: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        })
    }

    /// Queues `req` and wakes the main loop.
    pub fn send(&self, req: ApiRequest) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // At most one of each kind is pending: a flood of requests stays bounded.
        if !q.contains(&req) {
            q.push(req);
        }
        drop(q);
        if let Err(e) = self.evt.write(1) {
            log::warn!("control: cannot wake the main loop: {e}");
        }
    }

    /// Whether a shutdown is under way (power button pressed).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn take(&self) -> Vec<ApiRequest> {
        let _ = self.evt.read();
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Errors setting up control events.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("block SIGTERM/SIGINT for the signalfd")]
    BlockSignals(#[source] nix::Error),
    #[error("create the signalfd")]
    CreateSignalFd(#[source] nix::Error),
}

/// Something that asks the guest to shut down (the ACPI power button, or Ctrl-Alt-Del).
pub trait PowerButton: Send {
    fn press(&mut self);
}

/// Blocks SIGTERM and SIGINT in the calling thread; threads spawned afterwards inherit it.
/// Call before any other thread exists.
pub fn block_shutdown_signals() -> Result<SigSet, ControlError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().map_err(ControlError::BlockSignals)?;
    Ok(mask)
}

/// Turns signals, exit requests and the grace period into the run's outcome.
pub struct Control {
    signals: SignalFd,
    exit: Arc<ExitRequest>,
    button: Box<dyn PowerButton>,
    grace: Duration,
    deadline: Option<Instant>,
    outcome: Option<RunExit>,
    requests: Option<Arc<ControlRequests>>,
}

impl Control {
    /// `mask` is what [`block_shutdown_signals`] returned.
    pub fn new(
        mask: &SigSet,
        exit: Arc<ExitRequest>,
        button: Box<dyn PowerButton>,
        grace: Duration,
    ) -> Result<Self, ControlError> {
        let signals = SignalFd::with_flags(mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(ControlError::CreateSignalFd)?;
        Ok(Self {
            signals,
            exit,
            button,
            grace,
            deadline: None,
            outcome: None,
            requests: None,
        })
    }

    /// Also serves requests from the control socket.
    pub fn with_requests(mut self, requests: Arc<ControlRequests>) -> Self {
        self.requests = Some(requests);
        self
    }

    /// How the run ended, once it has.
    pub fn outcome(&self) -> Option<RunExit> {
        self.outcome
    }

    /// How long the event loop may sleep: until the grace deadline, or forever.
    pub fn timeout_ms(&self) -> i32 {
        match self.deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
        }
    }

    /// Ends the run with [`RunExit::HardStop`] once the grace period is over.
    pub fn check_deadline(&mut self) {
        if let Some(d) = self.deadline {
            if Instant::now() >= d && self.outcome.is_none() {
                log::warn!(
                    "guest did not shut down within {:?}; stopping it",
                    self.grace
                );
                self.outcome = Some(RunExit::HardStop);
            }
        }
    }

    fn on_signal(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let name = Signal::try_from(info.ssi_signo as i32)
                .map(|s| s.as_str())
                .unwrap_or("signal");
            self.shutdown(name);
        }
    }

    /// The one shutdown path of signals and the control socket: the first request presses
    /// the power button and starts the grace period, a second one stops the VM at once.
    fn shutdown(&mut self, why: &str) {
        if self.deadline.is_some() {
            log::warn!("second {why}: stopping the VM now");
            self.outcome.get_or_insert(RunExit::HardStop);
            return;
        }
        log::info!(
            "{why}: pressing the power button, grace period {:?}",
            self.grace
        );
        crate::notify::stopping();
        self.button.press();
        self.deadline = Some(Instant::now() + self.grace);
        if let Some(r) = &self.requests {
            r.stopping.store(true, Ordering::SeqCst);
        }
    }

    fn on_api_request(&mut self) {
        let Some(requests) = self.requests.clone() else {
            return;
        };
        for req in requests.take() {
            match req {
                // A repeated socket shutdown only re-asks; it does not escalate like a
                // second signal (stop --force / kill is the explicit way).
                ApiRequest::Shutdown if self.deadline.is_some() => {}
                ApiRequest::Shutdown => self.shutdown("control socket shutdown"),
                ApiRequest::Kill => {
                    log::warn!("control socket kill: stopping the VM now");
                    self.outcome.get_or_insert(RunExit::HardStop);
                }
            }
        }
    }

    fn on_exit_request(&mut self) {
        let _ = self.exit.event_fd().read();
        if let Some(kind) = self.exit.kind() {
            let outcome = exit_outcome(kind, self.deadline.is_some());
            self.outcome.get_or_insert(outcome);
        }
    }
}

/// The outcome of a guest exit request: a reboot or reset after a stop request is the guest
/// honouring that request (Ctrl-Alt-Del reboots), so it counts as a stop.
pub fn exit_outcome(kind: ExitKind, stop_requested: bool) -> RunExit {
    match (kind, stop_requested) {
        (ExitKind::Reboot, true) => {
            log::info!("guest rebooted after the stop request: treated as stopped");
            RunExit::Poweroff
        }
        (kind, _) => RunExit::from(kind),
    }
}

/// Whether the kernel command line turns ACPI off (`acpi=off`; the last `acpi=` wins, as in
/// Linux, where a later `acpi=force` turns it back on).
pub fn cmdline_disables_acpi(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|arg| arg.strip_prefix("acpi="))
        .next_back()
        .is_some_and(|value| value == "off")
}

impl MutEventSubscriber for Control {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_SIGNAL => self.on_signal(),
            TOKEN_EXIT => self.on_exit_request(),
            TOKEN_API => self.on_api_request(),
            other => log::warn!("control: event for unknown token {other}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let sig = Events::with_data(&self.signals, TOKEN_SIGNAL, EventSet::IN);
        let exit = Events::with_data(self.exit.event_fd(), TOKEN_EXIT, EventSet::IN);
        for ev in [sig, exit] {
            if let Err(e) = ops.add(ev) {
                log::error!("control: cannot watch fd: {e}");
            }
        }
        if let Some(r) = &self.requests {
            if let Err(e) = ops.add(Events::with_data(&r.evt, TOKEN_API, EventSet::IN)) {
                log::error!("control: cannot watch the control socket's eventfd: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct CountingButton(Arc<AtomicUsize>);
    impl PowerButton for CountingButton {
        fn press(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn control(grace: Duration) -> (Control, Arc<ExitRequest>, Arc<AtomicUsize>) {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGUSR2);
        mask.thread_block().unwrap();
        let exit = Arc::new(ExitRequest::new().unwrap());
        let presses = Arc::new(AtomicUsize::new(0));
        let c = Control::new(
            &mask,
            exit.clone(),
            Box::new(CountingButton(presses.clone())),
            grace,
        )
        .unwrap();
        (c, exit, presses)
    }

    #[test]
    fn exit_request_when_guest_powers_off_then_outcome_poweroff() {
        let (mut c, exit, _) = control(Duration::from_secs(1));
        assert_eq!(c.timeout_ms(), -1);
        exit.request(ExitKind::Poweroff);
        c.on_exit_request();
        assert_eq!(c.outcome(), Some(RunExit::Poweroff));
    }

    #[test]
    fn deadline_when_grace_expires_then_hard_stop() {
        let (mut c, _, presses) = control(Duration::from_millis(0));
        c.button.press();
        c.deadline = Some(Instant::now());
        c.check_deadline();
        assert_eq!(c.outcome(), Some(RunExit::HardStop));
        assert_eq!(presses.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn signal_when_delivered_then_button_pressed_and_deadline_set() {
        let (mut c, _, presses) = control(Duration::from_secs(30));
        // SAFETY: raising a blocked signal in this thread only queues it for the signalfd.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
        c.on_signal();
        assert_eq!(presses.load(Ordering::SeqCst), 1);
        assert!(c.timeout_ms() > 1000);
        assert_eq!(c.outcome(), None);
        // SAFETY: as above.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
        c.on_signal();
        assert_eq!(c.outcome(), Some(RunExit::HardStop));
    }

    #[test]
    fn exit_outcome_when_reboot_after_stop_request_then_poweroff() {
        assert_eq!(exit_outcome(ExitKind::Reboot, true), RunExit::Poweroff);
        assert_eq!(exit_outcome(ExitKind::Reboot, false), RunExit::Reboot);
        assert_eq!(exit_outcome(ExitKind::Poweroff, true), RunExit::Poweroff);
        assert_eq!(exit_outcome(ExitKind::Crash, true), RunExit::Crash);
        assert_eq!(exit_outcome(ExitKind::Crash, false), RunExit::Crash);
    }

    #[test]
    fn exit_request_when_reset_follows_signal_then_outcome_poweroff() {
        let (mut c, exit, presses) = control(Duration::from_secs(30));
        // SAFETY: raising a blocked signal in this thread only queues it for the signalfd.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
        c.on_signal();
        exit.request(ExitKind::Reboot);
        c.on_exit_request();
        assert_eq!(presses.load(Ordering::SeqCst), 1);
        assert_eq!(c.outcome(), Some(RunExit::Poweroff));
    }

    #[test]
    fn exit_request_when_reset_without_signal_then_outcome_reboot() {
        let (mut c, exit, _) = control(Duration::from_secs(30));
        exit.request(ExitKind::Reboot);
        c.on_exit_request();
        assert_eq!(c.outcome(), Some(RunExit::Reboot));
    }

    #[test]
    fn cmdline_disables_acpi_when_parsed_then_last_acpi_argument_wins() {
        assert!(cmdline_disables_acpi("console=ttyS0 acpi=off quiet"));
        assert!(!cmdline_disables_acpi("console=ttyS0 quiet"));
        assert!(!cmdline_disables_acpi("acpi=off acpi=force"));
        assert!(!cmdline_disables_acpi("noacpi=off pci=noacpi"));
        assert!(cmdline_disables_acpi("acpi=force acpi=off"));
    }

    #[test]
    fn api_request_when_shutdown_twice_then_one_press_and_stopping_then_kill_hard_stops() {
        let (c, _, presses) = control(Duration::from_secs(30));
        let requests = Arc::new(ControlRequests::new().unwrap());
        let mut c = c.with_requests(requests.clone());
        requests.send(ApiRequest::Shutdown);
        requests.send(ApiRequest::Shutdown);
        c.on_api_request();
        requests.send(ApiRequest::Shutdown);
        c.on_api_request();
        assert_eq!(presses.load(Ordering::SeqCst), 1);
        assert!(requests.stopping());
        assert_eq!(c.outcome(), None);
        requests.send(ApiRequest::Kill);
        c.on_api_request();
        assert_eq!(c.outcome(), Some(RunExit::HardStop));
    }
}
