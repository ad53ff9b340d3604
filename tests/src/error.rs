//! Errors of the lab. Each variant names the operation that failed.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while preparing or running a lab scenario.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Host tools the lab needs are absent; the message is one line with the fix.
    #[error("lab prerequisites missing: {missing}; fix: {fix}")]
    MissingPrerequisites {
        /// Comma-separated list of what is missing.
        missing: String,
        /// The command that installs it.
        fix: String,
    },
    /// Neither CARGO_TARGET_DIR nor a workspace above CARGO_MANIFEST_DIR was found.
    #[error("find the workspace target directory: set CARGO_TARGET_DIR or run from the workspace")]
    FindTargetDir,
    /// A release binary the lab copies into L1 has not been built.
    #[error("release binary {path} is missing: run `cargo build --release --workspace` first")]
    MissingReleaseBinary {
        /// Where the binary was expected.
        path: PathBuf,
    },
    /// The scenario definition is unusable (bad name, bad destination path).
    #[error("invalid scenario: {0}")]
    InvalidScenario(String),
    /// Creating a directory under target/lab failed.
    #[error("create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading a file failed.
    #[error("read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing a file failed.
    #[error("write {path}: {source}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Taking the lab-wide lock failed.
    #[error("lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A helper command could not be started.
    #[error("run `{command}`: {source}")]
    SpawnCommand {
        /// The command line.
        command: String,
        /// The cause.
        source: io::Error,
    },
    /// A helper command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// apt could not tell which kernel package or version to use.
    #[error("resolve Debian package {package}: {detail} (try `apt-get update`)")]
    ResolvePackage {
        /// The package asked about.
        package: String,
        /// What was wrong with apt's answer.
        detail: String,
    },
    /// A file the lab expected inside an unpacked package is not there.
    #[error("unpacked package lacks {path}")]
    PackageContent {
        /// The missing path.
        path: PathBuf,
    },
    /// QEMU could not be started.
    #[error("start QEMU ({command}): {source}")]
    SpawnQemu {
        /// The command line.
        command: String,
        /// The cause.
        source: io::Error,
    },
    /// The scenario did not finish in time; QEMU was killed.
    #[error(
        "lab scenario `{scenario}` timed out after {timeout:?}: QEMU killed; last output:\n{tail}"
    )]
    Timeout {
        /// Scenario name.
        scenario: String,
        /// The limit that was hit.
        timeout: Duration,
        /// From QEMU's start until it was killed and reaped.
        elapsed: Duration,
        /// The last lines of L1's console.
        tail: String,
        /// L1's whole console output.
        output: String,
    },
    /// L1 stopped (e.g. kernel panic) without reporting the scenario's exit status.
    #[error("lab scenario `{scenario}`: L1 stopped without reporting a status (QEMU {qemu_status}); last output:\n{tail}")]
    NoStatus {
        /// Scenario name.
        scenario: String,
        /// How QEMU ended.
        qemu_status: String,
        /// The last lines of L1's console.
        tail: String,
        /// L1's whole console output.
        output: String,
    },
    /// The scenario ran and exited non-zero (returned by [`crate::LabOutcome::ensure_success`]).
    #[error("lab scenario `{scenario}` exited with status {status}; last output:\n{tail}")]
    ScenarioFailed {
        /// Scenario name.
        scenario: String,
        /// Its exit status.
        status: i32,
        /// The last lines of L1's console.
        tail: String,
    },
}

/// The last `n` lines of `output`, for error messages.
pub(crate) fn tail_lines(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
