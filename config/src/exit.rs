//! The one exit-status contract of tinyvmm, netctl and tinyvmm-storage (README "Exit status").
//!
//! Every tool maps its outcomes onto [`Status`]; a code means the same in all three, and the
//! VM outcome codes (3, 4, 5) only come from `tinyvmm run` and `tinyvmm stop`. clap's own
//! usage errors already exit 2, which is [`Status::Invalid`].

/// How a command ended, as a process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Success; for `tinyvmm run`, the guest powered off.
    Ok = 0,
    /// The operation failed (the message names the step).
    Failed = 1,
    /// Invalid command line, name or config; nothing was created or changed.
    Invalid = 2,
    /// `tinyvmm run`: the guest rebooted or reset.
    VmReboot = 3,
    /// `tinyvmm run`: the guest crashed (pvpanic, KVM internal error, failed entry).
    VmCrash = 4,
    /// `tinyvmm run`: a shutdown request was not honoured in time; the VM was stopped hard.
    VmHardStop = 5,
    /// An internal error (a panic, i.e. a bug); the terminal was restored.
    Panic = 6,
    /// Refused for safety: the VM is running, or a destructive command was not confirmed.
    Refused = 7,
    /// `netctl status`: the host differs from the configs (drift).
    Drift = 8,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::Failed,
        Status::Invalid,
        Status::VmReboot,
        Status::VmCrash,
        Status::VmHardStop,
        Status::Panic,
        Status::Refused,
        Status::Drift,
    ];

    /// The numeric status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the status means, as README's table says it.
    pub fn meaning(self) -> &'static str {
        match self {
            Status::Ok => "success (`tinyvmm run`: the guest powered off)",
            Status::Failed => "the operation failed; the message names the step",
            Status::Invalid => {
                "invalid command line, name or config; nothing was created or changed"
            }
            Status::VmReboot => "`tinyvmm run`: the guest rebooted or reset",
            Status::VmCrash => "`tinyvmm run`: the guest crashed",
            Status::VmHardStop => "`tinyvmm run`: stopped hard after the shutdown grace period",
            Status::Panic => "internal error (a bug): printed once, terminal restored",
            Status::Refused => {
                "refused for safety: the VM is running, or the command was not confirmed"
            }
            Status::Drift => "`netctl status`: the host differs from the configs",
        }
    }
}

impl From<Status> for std::process::ExitCode {
    fn from(s: Status) -> Self {
        std::process::ExitCode::from(s.code())
    }
}

/// Makes a panic end the process with [`Status::Panic`] and one message on stderr, after
/// running `restore` (e.g. putting the terminal back in cooked mode). The workspace builds
/// with `panic = "abort"`, which would otherwise exit 134 with no documented meaning.
pub fn install_panic_hook(tool: &'static str, restore: fn()) {
    std::panic::set_hook(Box::new(move |info| {
        restore();
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        eprintln!("{tool}: internal error (a bug): thread '{name}' {info}");
        // SAFETY: _exit ends the process without running destructors or atexit handlers,
        // which may be in an inconsistent state after a panic.
        unsafe { libc::_exit(i32::from(Status::Panic.code())) };
    }));
}

/// `error: cause: root cause`, each cause once: a cause whose text the message already
/// contains (thiserror messages often interpolate their `source`) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("opening lock file /run/x.lock: {source}")]
        Interpolated { source: std::io::Error },
        #[error("creating TAP tap0")]
        Plain(#[source] std::io::Error),
    }

    #[test]
    fn error_chain_when_message_interpolates_its_source_then_cause_printed_once() {
        let denied = || std::io::Error::from_raw_os_error(libc::EACCES);
        let once = error_chain(&Outer::Interpolated { source: denied() });
        assert_eq!(
            once,
            "opening lock file /run/x.lock: Permission denied (os error 13)"
        );
        let appended = error_chain(&Outer::Plain(denied()));
        assert_eq!(
            appended,
            "creating TAP tap0: Permission denied (os error 13)"
        );
    }

    #[test]
    fn status_when_listed_then_codes_are_0_to_8_in_order() {
        let codes: Vec<u8> = Status::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, (0..=8).collect::<Vec<u8>>());
    }

    #[test]
    fn readme_when_read_then_its_exit_status_table_is_this_contract() {
        let readme = include_str!("../../README.md");
        for s in Status::ALL {
            let row = format!("| {} | {} |", s.code(), s.meaning());
            assert!(readme.contains(&row), "README lacks the row `{row}`");
        }
    }
}
