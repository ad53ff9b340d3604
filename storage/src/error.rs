//! Errors of the storage layer. Variants are named after the operation that failed.

use std::io;
use std::path::PathBuf;

use crate::config::BackendKind;

/// Everything a storage operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("read storage config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse storage config {path}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid storage config: {0}")]
    InvalidConfig(String),
    #[error("detect the backend of {path}")]
    Detect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("resolve owner {spec:?}: {reason}")]
    ResolveOwner { spec: String, reason: String },
    #[error("run {command}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("parse output of `{command}`: {reason}")]
    ParseOutput { command: String, reason: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {0} backend has no snapshots (use zfs or btrfs for snapshot, rollback, clone and prune)")]
    NoSnapshots(BackendKind),
    #[error("storage root {0} is not initialised (run `tinyvmm-storage init`)")]
    NotInitialized(PathBuf),
    #[error("{path} exists but is not a {expected}")]
    NotAVolume { path: PathBuf, expected: String },
    #[error("{0}")]
    InitMismatch(String),
    #[error("VM {0:?} does not exist")]
    VmNotFound(String),
    #[error("VM {0:?} already exists")]
    VmExists(String),
    #[error("VM {vm:?} exists with a different layout: {}", problems.join("; "))]
    LayoutMismatch { vm: String, problems: Vec<String> },
    #[error("snapshot {vm}@{snap} does not exist")]
    SnapshotNotFound { vm: String, snap: String },
    #[error("snapshot {vm}@{snap} already exists")]
    SnapshotExists { vm: String, snap: String },
    #[error(
        "rolling {vm} back to {snap} would destroy the newer snapshots {} (ZFS can only roll back to the latest snapshot); pass --destroy-newer to accept that",
        newer.join(", ")
    )]
    RollbackNewerSnapshots {
        vm: String,
        snap: String,
        newer: Vec<String>,
    },
    #[error("VM {vm:?} is running (run lock {lock} is held): refusing to {op}")]
    VmRunning {
        vm: String,
        op: &'static str,
        lock: PathBuf,
    },
    #[error("check whether VM {vm:?} is running")]
    CheckRunning {
        vm: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} failed: {source}; cleaning up the half-made {what} also failed: {cleanup}")]
    Cleanup {
        op: &'static str,
        what: String,
        #[source]
        source: Box<StorageError>,
        cleanup: Box<StorageError>,
    },
    #[error("destroy of VM {0:?} not confirmed")]
    NotConfirmed(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Wraps an [`io::Error`] with the operation and path it came from.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { op, path, source }
}
