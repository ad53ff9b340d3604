//! Pausing the vCPUs: each vCPU thread parks on a condvar between two KVM_RUN calls.
//!
//! A vCPU inside KVM_RUN is kicked out with the vCPU kick signal ([`crate::vcpu::kick_signal`],
//! whose handler sets `immediate_exit`, so a kick just before KVM_RUN is not lost either);
//! KVM_RUN returns EINTR and the loop parks. [`VcpuPause::pause`] still repeats the kicks
//! until every vCPU has parked (or exited), with a deadline.
//!
//! The guest clock: kvmclock keeps following host time, so after a resume the guest's wall
//! clock is right and its monotonic clock has jumped by the pause length. Each vCPU calls
//! KVM_KVMCLOCK_CTRL when it unparks so a guest with kvmclock knows the stall was the host's
//! (no soft-lockup splat); hosts or guests without it just see the jump.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::Killable;

use crate::vcpu::kick_signal;

/// How long a pause waits for every vCPU to park.
const PARK_DEADLINE: Duration = Duration::from_secs(3);
const KICK_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
struct State {
    paused: bool,
    parked: usize,
    exited: usize,
}

/// Shared by the vCPU threads (which park) and the control socket (which pauses/resumes).
pub struct VcpuPause {
    state: Mutex<State>,
    cond: Condvar,
    total: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Why a pause did not take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("{parked} of {total} vCPUs parked within the deadline; resumed")]
    Timeout { parked: usize, total: usize },
}

impl VcpuPause {
    pub fn new(total: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            total,
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Keeps the vCPU threads' handles (alive, so their pthread ids stay valid for kicks).
    pub fn add_thread(&self, handle: JoinHandle<()>) {
        lock(&self.threads).push(handle);
    }

    /// Hands the vCPU threads over for [`crate::vcpu::stop_all`] at the end of the run.
    pub fn take_threads(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *lock(&self.threads))
    }

    pub fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// Called by a vCPU thread between runs. Returns true if it was parked.
    pub fn park_if_paused(&self) -> bool {
        let mut s = lock(&self.state);
        if !s.paused {
            return false;
        }
        s.parked += 1;
        self.cond.notify_all();
        while s.paused {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.parked -= 1;
        self.cond.notify_all();
        true
    }

    /// Called by a vCPU thread as it ends, so a pause does not wait for it.
    pub fn vcpu_exited(&self) {
        lock(&self.state).exited += 1;
        self.cond.notify_all();
    }

    /// Parks every vCPU; returns once all are parked.
    pub fn pause(&self) -> Result<(), PauseError> {
        let mut s = lock(&self.state);
        if s.paused {
            return Err(PauseError::AlreadyPaused);
        }
        s.paused = true;
        let deadline = Instant::now() + PARK_DEADLINE;
        while s.parked + s.exited < self.total {
            if Instant::now() >= deadline {
                let parked = s.parked;
                s.paused = false;
                self.cond.notify_all();
                return Err(PauseError::Timeout {
                    parked,
                    total: self.total,
                });
            }
            drop(s);
            self.kick_all();
            s = lock(&self.state);
            s = self
                .cond
                .wait_timeout(s, KICK_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Unparks every vCPU.
    pub fn resume(&self) -> Result<(), PauseError> {
        let mut s = lock(&self.state);
        if !s.paused {
            return Err(PauseError::NotPaused);
        }
        s.paused = false;
        self.cond.notify_all();
        Ok(())
    }

    fn kick_all(&self) {
        for t in lock(&self.threads).iter() {
            if t.is_finished() {
                continue;
            }
            if let Err(e) = t.kill(kick_signal()) {
                log::warn!("pause: cannot signal a vCPU thread: {e}");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// Threads that spin like a vCPU loop (a blocking "run" kicked by the signal is what the
    /// PVM test covers; here the loop checks between iterations).
    fn spinners(n: usize) -> (Arc<VcpuPause>, Arc<AtomicU64>, Arc<AtomicBool>) {
        crate::vcpu::install_kick_handler().unwrap();
        let pause = Arc::new(VcpuPause::new(n));
        let work = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..n {
            let (p, w, s) = (pause.clone(), work.clone(), stop.clone());
            pause.add_thread(std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    p.park_if_paused();
                    w.fetch_add(1, Ordering::SeqCst);
                    std::thread::yield_now();
                }
                p.vcpu_exited();
            }));
        }
        (pause, work, stop)
    }

    #[test]
    fn pause_when_threads_spin_then_all_park_and_no_work_until_resume() {
        let (pause, work, stop) = spinners(3);
        pause.pause().unwrap();
        let before = work.load(Ordering::SeqCst);
        for _ in 0..100 {
            std::thread::yield_now();
        }
        assert_eq!(work.load(Ordering::SeqCst), before);
        assert_eq!(pause.pause(), Err(PauseError::AlreadyPaused));
        pause.resume().unwrap();
        assert_eq!(pause.resume(), Err(PauseError::NotPaused));
        let deadline = Instant::now() + Duration::from_secs(10);
        while work.load(Ordering::SeqCst) == before {
            assert!(Instant::now() < deadline, "no progress after resume");
            std::thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn pause_when_every_vcpu_exited_then_returns_at_once() {
        let (pause, _, stop) = spinners(2);
        stop.store(true, Ordering::SeqCst);
        for t in lock(&pause.threads).drain(..) {
            t.join().unwrap();
        }
        pause.pause().unwrap();
    }
}
