//! Validation of VM and snapshot names.
//!
//! Names become path components, ZFS dataset components and lock-file names, so they are
//! restricted to characters that are safe in all three: no `/`, `@`, spaces or control
//! characters, no leading `.` or `-` (hidden files, CLI options).

use crate::error::{Result, StorageError};

/// Longest VM name; the same limit as the VM config's `name`.
pub const MAX_VM_NAME: usize = 32;
/// Longest snapshot name.
pub const MAX_SNAPSHOT_NAME: usize = 64;

/// A VM name: `[a-z0-9-]`, 1..=32 characters, not starting with `-` — the VM config's rule
/// (`vmconfig::validate::check_name`), since the name is also the run lock's name.
pub fn validate_vm_name(name: &str) -> Result<()> {
    vmconfig::validate::check_name(name).map_err(|reason| StorageError::InvalidName {
        what: "VM",
        name: name.to_string(),
        reason,
    })
}

/// A snapshot name: `[A-Za-z0-9._:-]`, 1..=64 characters, not starting with `.` or `-`.
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(StorageError::InvalidName {
            what: "snapshot",
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_SNAPSHOT_NAME {
        return bad("longer than 64 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("starts with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return bad(
            "only A-Z, a-z, 0-9, '.', '_', ':' and '-' are allowed (no '/', '@' or spaces)",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_name_when_valid_then_accepted() {
        for n in ["vm1", "a", "web-2", &"x".repeat(32)] {
            assert!(validate_vm_name(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn vm_name_when_unsafe_then_rejected() {
        for n in [
            "",
            "a/b",
            "a@b",
            "a b",
            "Vm1",
            "-vm",
            ".vm",
            "..",
            "vm\n",
            "vm_1",
            &"x".repeat(33),
        ] {
            assert!(
                matches!(validate_vm_name(n), Err(StorageError::InvalidName { .. })),
                "{n:?}"
            );
        }
    }

    #[test]
    fn snapshot_name_when_valid_then_accepted() {
        for n in ["20261126T034350Z", "before-upgrade", "v1.2_rc:3", "A"] {
            assert!(validate_snapshot_name(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn snapshot_name_when_unsafe_then_rejected() {
        for n in [
            "",
            "a/b",
            "a@b",
            "a b",
            ".hidden",
            "-x",
            "..",
            "a\tb",
            &"s".repeat(65),
        ] {
            assert!(
                matches!(
                    validate_snapshot_name(n),
                    Err(StorageError::InvalidName { .. })
                ),
                "{n:?}"
            );
        }
    }
}
