//! The process exit codes of `tinyvmm run`: the shared contract of [`vmconfig::exit::Status`]
//! (README "Exit status"), named the way a run ends.

use devices::exit::ExitKind;
use vmconfig::exit::Status;

/// How a run ended, as a process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum RunExit {
    /// The guest powered off.
    Poweroff = Status::Ok as i32,
    /// tinyvmm failed to set up or run the VM.
    Error = Status::Failed as i32,
    /// The config or command line was invalid; nothing was created.
    InvalidConfig = Status::Invalid as i32,
    /// The guest asked for a reboot or reset (also a kernel panic with `panic=N` in a guest
    /// without a pvpanic driver).
    Reboot = Status::VmReboot as i32,
    /// The guest crashed: its kernel reported a panic through pvpanic, or a vCPU hit an
    /// internal error or failed entry.
    Crash = Status::VmCrash as i32,
    /// A shutdown request was not honoured within the grace period; the VM was stopped hard.
    HardStop = Status::VmHardStop as i32,
    /// tinyvmm hit an internal error (a panic: a bug); the terminal was restored.
    Panic = Status::Panic as i32,
    /// Refused for safety: the VM is already running.
    Refused = Status::Refused as i32,
}

impl RunExit {
    /// The numeric status.
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl From<ExitKind> for RunExit {
    fn from(kind: ExitKind) -> Self {
        match kind {
            ExitKind::Poweroff => RunExit::Poweroff,
            ExitKind::Reboot => RunExit::Reboot,
            ExitKind::Crash => RunExit::Crash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_when_listed_then_distinct_and_documented_values() {
        let all = [
            RunExit::Poweroff,
            RunExit::Error,
            RunExit::InvalidConfig,
            RunExit::Reboot,
            RunExit::Crash,
            RunExit::HardStop,
            RunExit::Panic,
            RunExit::Refused,
        ];
        let codes: Vec<i32> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(RunExit::from(ExitKind::Reboot), RunExit::Reboot);
    }
}
