//! The process exit codes of `tinyvmm run` (documented in README).

use devices::exit::ExitKind;

/// How a run ended, as a process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum RunExit {
    /// The guest powered off.
    Poweroff = 0,
    /// tinyvmm failed to set up or run the VM.
    Error = 1,
    /// The config or command line was invalid; nothing was created.
    InvalidConfig = 2,
    /// The guest asked for a reboot or reset (also a kernel panic with `panic=N` in a guest
    /// without a pvpanic driver).
    Reboot = 3,
    /// The guest crashed: its kernel reported a panic through pvpanic, or a vCPU hit an
    /// internal error or failed entry.
    Crash = 4,
    /// A shutdown request was not honoured within the grace period; the VM was stopped hard.
    HardStop = 5,
    /// tinyvmm hit an internal error (a panic: a bug); the terminal was restored.
    Panic = 6,
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
        ];
        let codes: Vec<i32> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(RunExit::from(ExitKind::Reboot), RunExit::Reboot);
    }
}
