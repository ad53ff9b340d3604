//! Per-VM datasets for tinyvmm, with snapshots and rollback, on ZFS, btrfs or plain
//! directories.
//!
//! Each VM is a directory `<root>/<vm>` with `etc/` and `var/` (shared into the VM over
//! virtio-fs), backed by a ZFS dataset, a btrfs subvolume or a plain directory. [`Store`]
//! applies the safety rules (names, run lock, layout, idempotency, cleanup); a
//! [`backend::Backend`] does the storage-specific work.
//!
//! The VMM's snapshot-on-start:
//! ```no_run
//! # fn main() -> Result<(), storage::StorageError> {
//! let cfg = storage::HostStorageConfig::load(
//!     std::path::Path::new(storage::config::DEFAULT_CONFIG_PATH), false)?;
//! let store = storage::Store::open(&cfg)?;
//! let snap = store.snapshot("vm1", None)?;
//! let pruned = store.prune("vm1", 10)?;
//! # let _ = (snap, pruned); Ok(()) }
//! ```

pub mod backend;
pub mod cli;
pub mod config;
pub mod error;
pub mod exec;
pub mod name;
pub mod owner;
pub mod runlock;
pub mod store;
pub mod timestamp;

pub use backend::{Outcome, SnapshotInfo};
pub use config::{BackendKind, HostStorageConfig};
pub use error::{Result, StorageError};
pub use store::{Destroyed, Store, VmInfo};
