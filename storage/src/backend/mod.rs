//! Storage backends: how a VM's volume and its snapshots are made on one kind of storage.
//!
//! A backend only does the storage-specific step of each operation. Name validation, the
//! run-lock check, the etc/ + var/ layout, ownership, idempotency and cleanup after partial
//! failure live once in [`crate::Store`].

use std::path::PathBuf;

use crate::config::BackendKind;
use crate::error::Result;

pub mod btrfs;
pub mod dir;
pub mod zfs;
pub mod zfs_parse;
#[cfg(test)]
mod zfs_tests;

/// Whether an idempotent operation did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    AlreadyExisted,
}

/// One snapshot of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    /// Creation time, seconds since the Unix epoch, when the backend knows it.
    pub created: Option<i64>,
    /// Bytes held only by this snapshot, when the backend knows it (ZFS `used`).
    pub used: Option<u64>,
}

/// The storage-specific half of each operation. VM and snapshot names reaching a backend
/// have already been validated.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// The directory holding the VMs' directories.
    fn root(&self) -> PathBuf;
    /// Directory where the VM's files live.
    fn vm_path(&self, vm: &str) -> PathBuf;
    /// Creates the parent dataset/subvolume/directory at the root; idempotent.
    fn init(&self) -> Result<Outcome>;
    /// Whether [`Backend::init`] has been done.
    fn is_initialized(&self) -> Result<bool>;
    /// Whether the VM's volume exists (an error if something else is in its place).
    fn vm_exists(&self, vm: &str) -> Result<bool>;
    /// Creates the VM's empty volume; fails if it exists.
    fn create_volume(&self, vm: &str) -> Result<()>;
    /// Removes the VM's volume and all its snapshots.
    fn delete_volume(&self, vm: &str) -> Result<()>;
    /// Names of all VM volumes, sorted.
    fn list_vms(&self) -> Result<Vec<String>>;
    /// Takes a read-only snapshot.
    fn snapshot(&self, vm: &str, snap: &str) -> Result<()>;
    /// The VM's snapshots, oldest first.
    fn snapshots(&self, vm: &str) -> Result<Vec<SnapshotInfo>>;
    /// Returns the VM's volume to the state of `snap`. `destroy_newer` allows backends that
    /// can only roll back to the latest snapshot (ZFS) to destroy the newer ones.
    fn rollback(&self, vm: &str, snap: &str, destroy_newer: bool) -> Result<()>;
    /// Creates `new_vm`'s volume as a writable copy of `vm@snap`.
    fn clone_snapshot(&self, vm: &str, snap: &str, new_vm: &str) -> Result<()>;
    /// Deletes one snapshot.
    fn delete_snapshot(&self, vm: &str, snap: &str) -> Result<()>;
}
