//! Running the `zfs` and `btrfs` command-line tools.
//!
//! Backends talk to the tools through [`Runner`] so that the ZFS command layer can be tested
//! against captured output on machines without ZFS; production code uses [`SystemRunner`].

use std::process::Command;

use crate::error::{Result, StorageError};

/// What a finished command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs a program with arguments and collects its output.
pub trait Runner: Send + Sync {
    fn run(&self, program: &str, args: &[String]) -> Result<CmdOutput>;
}

/// Runs real processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<CmdOutput> {
        log::debug!("run: {}", render(program, args));
        let out = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .map_err(|source| StorageError::Spawn {
                command: render(program, args),
                source,
            })?;
        Ok(CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A command line as a user would type it (for messages).
pub fn render(program: &str, args: &[String]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs a command and turns a non-zero exit into [`StorageError::CommandFailed`].
pub fn run_ok(runner: &dyn Runner, program: &str, args: &[String]) -> Result<CmdOutput> {
    let out = runner.run(program, args)?;
    if out.success() {
        Ok(out)
    } else {
        Err(failed(program, args, &out))
    }
}

/// The error for a command that ran but failed.
pub fn failed(program: &str, args: &[String], out: &CmdOutput) -> StorageError {
    StorageError::CommandFailed {
        command: render(program, args),
        status: match out.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        },
        stderr: out.stderr.trim().to_string(),
    }
}

/// Builds an argument vector from string slices.
pub fn args<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}
