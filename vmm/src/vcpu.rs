//! The vCPU thread: one `match` over the KVM exit, I/O and MMIO handed to the buses.

use std::cell::Cell;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::bus::Bus;
use devices::exit::{ExitKind, ExitRequest};
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::pause::VcpuPause;
use crate::timing::{Milestone, Timing};

thread_local! {
    /// This thread's `kvm_run` area, for the kick handler (null on non-vCPU threads).
    /// Const-initialised: no lazy init or destructor, so the handler may touch it.
    static KVM_RUN: Cell<*mut kvm_bindings::kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is this thread's own kvm_run mapping, set by `Vcpu::run` before the
        // first KVM_RUN and valid while the VcpuFd lives (the thread owns it). A volatile
        // store of one byte is async-signal-safe. If the signal lands just before KVM_RUN
        // is entered, the flag makes that KVM_RUN return EINTR at once: no lost kick.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (once per process, before vCPU threads start).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), handle_kick)
}

/// How often [`stop_all`] re-signals a vCPU thread that has not ended yet.
const KICK_INTERVAL: Duration = Duration::from_millis(10);
/// How often [`stop_all`] looks at whether the threads have ended.
const POLL_INTERVAL: Duration = Duration::from_micros(200);

/// Stops every vCPU thread: the exit request is marked halted (no vCPU re-enters the
/// guest), each thread is signalled out of KVM_RUN, and this waits up to `timeout` for all
/// of them to end, re-signalling the ones still running every [`KICK_INTERVAL`]. Returns how
/// many are still running.
///
/// The kick is a real-time signal, and those queue: re-signalling in a tight loop (as this
/// once did) queued signals faster than the target could run their handler, so the thread
/// spent the whole timeout in signal delivery and never reached its `halted` check (seen
/// once in CI as "vCPU threads still in KVM_RUN after 5 s").
pub fn stop_all(exit: &ExitRequest, threads: Vec<JoinHandle<()>>, timeout: Duration) -> usize {
    exit.halt();
    let deadline = Instant::now() + timeout;
    let mut running = threads;
    let mut next_kick = Instant::now();
    while !running.is_empty() && Instant::now() < deadline {
        if Instant::now() >= next_kick {
            for t in &running {
                if let Err(e) = t.kill(kick_signal()) {
                    log::warn!("cannot kick a vCPU thread: {e}");
                }
            }
            next_kick = Instant::now() + KICK_INTERVAL;
        }
        let (done, left): (Vec<_>, Vec<_>) = running.into_iter().partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        running = left;
        if !running.is_empty() {
            // Waiting for the threads to end (JoinHandle has no timed join): look again soon.
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    running.len()
}

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
        let run: *mut kvm_bindings::kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run));
        loop {
            if pause.park_if_paused() {
                // Tell a kvmclock guest the stall was the host's; EINVAL when it has none.
                if let Err(e) = self.fd.kvmclock_ctrl() {
                    log::debug!("vcpu{}: KVM_KVMCLOCK_CTRL: {e}", self.id);
                }
            }
            if self.exit.kind().is_some() || self.exit.halted() {
                break;
            }
            if let Next::Stop(kind) = self.run_once() {
                log::info!("vcpu{}: stopping the VM ({kind:?})", self.id);
                self.exit.request(kind);
                break;
            }
            // A device on this or another vCPU asked to stop, or the VMM is stopping: don't
            // re-enter the guest.
            if self.exit.kind().is_some() || self.exit.halted() {
                break;
            }
        }
        // The kvm_run mapping goes away with `self.fd`: a late kick must not touch it.
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
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
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick: clear the flag so a later entry (if not stopping) runs the guest.
                self.fd.set_kvm_immediate_exit(0);
                Next::Continue
            }
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

    /// A real-mode guest that spins on `jmp $` forever (it never exits on its own) is kicked
    /// out of KVM_RUN by `stop_all`. Needs /dev/kvm (CI runs as root on a KVM host); fails
    /// loudly without it.
    #[test]
    fn stop_all_when_guest_spins_in_kvm_run_then_every_vcpu_thread_ends() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm is required for this test");
        let vm = kvm.create_vm().unwrap();
        let mem_size = 0x1000;
        // SAFETY: an anonymous private mapping with no preconditions; checked below.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mem_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        assert_ne!(host, libc::MAP_FAILED);
        // SAFETY: the mapping is mem_size bytes and writable; `jmp $` is EB FE.
        unsafe { std::ptr::copy_nonoverlapping([0xebu8, 0xfe].as_ptr(), host.cast(), 2) };
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: mem_size as u64,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region maps memory this test owns for the VM's whole life.
        unsafe { vm.set_user_memory_region(region).unwrap() };
        let exit = Arc::new(ExitRequest::new().unwrap());
        install_kick_handler().unwrap();
        let mut threads = Vec::new();
        for id in 0..2u8 {
            let fd = vm.create_vcpu(u64::from(id)).unwrap();
            let mut sregs = fd.get_sregs().unwrap();
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            fd.set_sregs(&sregs).unwrap();
            let mut regs = fd.get_regs().unwrap();
            regs.rip = 0;
            regs.rflags = 2;
            fd.set_regs(&regs).unwrap();
            let vcpu = Vcpu {
                id,
                fd,
                pio: Arc::new(Bus::new()),
                mmio: Arc::new(Bus::new()),
                exit: exit.clone(),
                timing: Timing::new(Instant::now(), false),
            };
            threads.push(vcpu.spawn(Arc::new(VcpuPause::new(2))).unwrap());
        }
        // Both threads are inside the guest (or about to be): the loop never exits by itself.
        assert!(threads.iter().all(|t| !t.is_finished()));

        let started = Instant::now();
        let left = stop_all(&exit, threads, Duration::from_secs(5));
        let took = started.elapsed();

        assert_eq!(left, 0, "vCPU threads still in KVM_RUN after {took:?}");
        assert!(took < Duration::from_secs(2), "stopping took {took:?}");
        assert_eq!(exit.kind(), None, "a kick is not a guest exit request");
        drop(vm);
        // SAFETY: the VM (and its vCPUs) are gone; the mapping is ours.
        unsafe { libc::munmap(host, mem_size) };
    }

    #[test]
    fn system_event_when_mapped_then_matches_kvm_meaning() {
        assert_eq!(system_event(KVM_SYSTEM_EVENT_SHUTDOWN), ExitKind::Poweroff);
        assert_eq!(system_event(KVM_SYSTEM_EVENT_RESET), ExitKind::Reboot);
        assert_eq!(system_event(KVM_SYSTEM_EVENT_CRASH), ExitKind::Crash);
        assert_eq!(system_event(999), ExitKind::Crash);
    }
}
