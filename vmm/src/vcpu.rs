//! The vCPU thread: one `match` over the KVM exit, I/O and MMIO handed to the buses.

use std::sync::Arc;
use std::thread::JoinHandle;

use devices::bus::Bus;
use devices::exit::{ExitKind, ExitRequest};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::pause::VcpuPause;
use crate::timing::{Milestone, Timing};

/// What the loop does after one exit.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Stop(ExitKind),
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    pub(crate) id: u8,
    pub(crate) fd: VcpuFd,
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    pub(crate) exit: Arc<ExitRequest>,
    pub(crate) timing: Timing,
}

impl Vcpu {
    /// Starts the vCPU on a thread named `vcpu<N>`; it parks whenever `pause` says so.
    pub fn spawn(self, pause: Arc<VcpuPause>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || {
                self.run(&pause);
                pause.vcpu_exited();
            })
    }

    fn run(mut self, pause: &VcpuPause) {
        if self.id == 0 {
            self.timing.mark(Milestone::FirstVcpuEntry);
        }
        loop {
            if pause.park_if_paused() {
                // Tell a kvmclock guest the stall was the host's; EINVAL when it has none.
                if let Err(e) = self.fd.kvmclock_ctrl() {
                    log::debug!("vcpu{}: KVM_KVMCLOCK_CTRL: {e}", self.id);
                }
            }
            // A device on this or another vCPU asked to stop: don't re-enter the guest.
            if self.exit.kind().is_some() {
                return;
            }
            if let Next::Stop(kind) = self.run_once() {
                log::info!("vcpu{}: stopping the VM ({kind:?})", self.id);
                self.exit.request(kind);
                return;
            }
        }
    }

    fn run_once(&mut self) -> Next {
        let id = self.id;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    if !self.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    Next::Continue
                }
                VcpuExit::IoOut(port, data) => {
                    self.pio.write(u64::from(port), data);
                    Next::Continue
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !self.mmio.read(addr, data) {
                        log::debug!("vcpu{id}: read of unclaimed MMIO {addr:#x}");
                        data.fill(0);
                    }
                    Next::Continue
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !self.mmio.write(addr, data) {
                        log::debug!("vcpu{id}: write to unclaimed MMIO {addr:#x}");
                    }
                    Next::Continue
                }
                VcpuExit::Intr | VcpuExit::Hlt => Next::Continue,
                VcpuExit::Shutdown => {
                    log::info!("vcpu{id}: triple fault / shutdown, treated as reset");
                    Next::Stop(ExitKind::Reboot)
                }
                VcpuExit::SystemEvent(kind, _) => Next::Stop(system_event(kind)),
                VcpuExit::FailEntry(reason, cpu) => {
                    log::error!("vcpu{id}: entry failed, reason {reason:#x} on host cpu {cpu}");
                    Next::Stop(ExitKind::Crash)
                }
                VcpuExit::InternalError => {
                    log::error!("vcpu{id}: KVM internal error");
                    Next::Stop(ExitKind::Crash)
                }
                other => {
                    log::error!("vcpu{id}: unexpected exit {other:?}");
                    Next::Stop(ExitKind::Crash)
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => {
                log::error!("vcpu{id}: KVM_RUN failed: {e}");
                Next::Stop(ExitKind::Crash)
            }
        }
    }
}

fn system_event(kind: u32) -> ExitKind {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => ExitKind::Poweroff,
        KVM_SYSTEM_EVENT_RESET => ExitKind::Reboot,
        KVM_SYSTEM_EVENT_CRASH => ExitKind::Crash,
        _ => ExitKind::Crash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_event_when_mapped_then_matches_kvm_meaning() {
        assert_eq!(system_event(KVM_SYSTEM_EVENT_SHUTDOWN), ExitKind::Poweroff);
        assert_eq!(system_event(KVM_SYSTEM_EVENT_RESET), ExitKind::Reboot);
        assert_eq!(system_event(KVM_SYSTEM_EVENT_CRASH), ExitKind::Crash);
        assert_eq!(system_event(999), ExitKind::Crash);
    }
}
