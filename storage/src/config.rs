//! Host storage configuration (`/etc/tinyvmm/storage.json`) and backend detection.
//!
//! ```json
//! { "backend": "zfs", "root": "/var/lib/microvms", "dataset": "rpool/microvms",
//!   "owner": "microvm:kvm", "run_dir": "/run/tinyvmm" }
//! ```
//! Every field is optional: `backend` defaults to `auto` (detected from the file system of
//! `root`), `root` to `/var/lib/microvms`, `dataset` (zfs only) to the dataset mounted at
//! `root`, `owner` to the invoking user, `run_dir` to `$TINYVMM_RUN_DIR` or `/run/tinyvmm`.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// Where the host storage config lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tinyvmm/storage.json";
/// Where VM directories live unless configured otherwise (the seed's layout).
pub const DEFAULT_ROOT: &str = "/var/lib/microvms";

/// `statfs.f_type` of btrfs (linux/magic.h BTRFS_SUPER_MAGIC).
pub const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// `statfs.f_type` of ZFS on Linux (ZFS_SUPER_MAGIC in OpenZFS).
pub const ZFS_SUPER_MAGIC: i64 = 0x2FC1_2FC1;

/// A storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Zfs,
    Btrfs,
    Dir,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Zfs => "zfs",
            BackendKind::Btrfs => "btrfs",
            BackendKind::Dir => "dir",
        })
    }
}

/// The configured backend: a fixed one or `auto` (detect from `root`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Zfs,
    Btrfs,
    Dir,
}

/// The host's storage configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostStorageConfig {
    #[serde(default)]
    pub backend: BackendChoice,
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// ZFS parent dataset (e.g. `rpool/microvms`), mounted at `root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// `user[:group]` (names or numeric ids) that owns each VM's directory, etc/ and var/.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Directory of tinyvmm's run locks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}

impl Default for HostStorageConfig {
    fn default() -> Self {
        HostStorageConfig {
            backend: BackendChoice::Auto,
            root: default_root(),
            dataset: None,
            owner: None,
            run_dir: None,
        }
    }
}

impl HostStorageConfig {
    /// Parses a config from JSON text; `path` is only used in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let cfg: HostStorageConfig =
            serde_json::from_str(text).map_err(|source| StorageError::ParseConfig {
                path: path.to_path_buf(),
                source,
            })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Loads `path`. A missing file is an error only when `required` (it was named explicitly);
    /// otherwise the defaults apply.
    pub fn load(path: &Path, required: bool) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_json(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(source) => Err(StorageError::ReadConfig {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Checks what serde cannot: an absolute root, a plausible dataset name.
    pub fn check(&self) -> Result<()> {
        if !self.root.is_absolute() {
            return Err(StorageError::InvalidConfig(format!(
                "root {} is not an absolute path",
                self.root.display()
            )));
        }
        if let Some(ds) = &self.dataset {
            let ok = !ds.is_empty()
                && !ds.starts_with('/')
                && !ds.ends_with('/')
                && !ds.contains("//")
                && !ds.contains('@')
                && !ds.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(StorageError::InvalidConfig(format!(
                    "dataset {ds:?} is not a ZFS dataset name like rpool/microvms"
                )));
            }
        }
        Ok(())
    }

    /// The run-lock directory: configured, else `$TINYVMM_RUN_DIR`, else `/run/tinyvmm`.
    pub fn run_dir(&self) -> PathBuf {
        match &self.run_dir {
            Some(dir) => dir.clone(),
            None => vmconfig::default_run_dir(),
        }
    }

    /// The backend to use: the configured one, or the one detected from `root`.
    pub fn resolve_backend(&self) -> Result<BackendKind> {
        match self.backend {
            BackendChoice::Zfs => Ok(BackendKind::Zfs),
            BackendChoice::Btrfs => Ok(BackendKind::Btrfs),
            BackendChoice::Dir => Ok(BackendKind::Dir),
            BackendChoice::Auto => detect(&self.root),
        }
    }
}

/// The `statfs` file-system magic of `path`.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Detects the backend from the file system holding `root` (or, if `root` does not exist yet,
/// its nearest existing ancestor): btrfs, zfs, else plain directories.
pub fn detect(root: &Path) -> Result<BackendKind> {
    let mut probe = root;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(p) => p,
            None => break,
        };
    }
    let magic = fs_magic(probe).map_err(|source| StorageError::Detect {
        path: probe.to_path_buf(),
        source,
    })?;
    Ok(match magic {
        BTRFS_SUPER_MAGIC => BackendKind::Btrfs,
        ZFS_SUPER_MAGIC => BackendKind::Zfs,
        _ => BackendKind::Dir,
    })
}

/// The source (for ZFS: the dataset) of the file system mounted exactly at `mountpoint`,
/// from /proc/self/mountinfo.
pub fn mount_source(mountpoint: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_source_in(&info, mountpoint)
}

/// [`mount_source`] over given mountinfo text; the last matching mount wins (it is on top).
pub fn mount_source_in(mountinfo: &str, mountpoint: &Path) -> Option<String> {
    let want = mountpoint.as_os_str().as_bytes();
    let mut found = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mp), Some(src)) = (fields.get(4), fields.get(sep + 2)) else {
            continue;
        };
        if unescape_mountinfo(mp).as_bytes() == want {
            found = Some(unescape_mountinfo(src));
        }
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_json_when_full_then_all_fields_read() {
        let cfg = HostStorageConfig::from_json(
            r#"{"backend":"zfs","root":"/var/lib/microvms","dataset":"rpool/microvms","owner":"microvm:kvm","run_dir":"/run/x"}"#,
            Path::new("t.json"),
        )
        .unwrap();
        assert_eq!(cfg.backend, BackendChoice::Zfs);
        assert_eq!(cfg.dataset.as_deref(), Some("rpool/microvms"));
        assert_eq!(cfg.owner.as_deref(), Some("microvm:kvm"));
        assert_eq!(cfg.run_dir(), PathBuf::from("/run/x"));
    }

    #[test]
    fn from_json_when_empty_object_then_defaults() {
        let cfg = HostStorageConfig::from_json("{}", Path::new("t.json")).unwrap();
        assert_eq!(cfg, HostStorageConfig::default());
    }

    #[test]
    fn from_json_when_unknown_field_or_bad_values_then_error() {
        for text in [
            r#"{"backend":"lvm"}"#,
            r#"{"snapshots":true}"#,
            r#"{"root":"relative/dir"}"#,
            r#"{"dataset":"rpool/micro vms"}"#,
            r#"{"dataset":"rpool/microvms@snap"}"#,
            "{",
        ] {
            assert!(
                HostStorageConfig::from_json(text, Path::new("t.json")).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn load_when_default_file_missing_then_defaults_but_named_file_missing_then_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("storage.json");
        assert_eq!(
            HostStorageConfig::load(&missing, false).unwrap(),
            HostStorageConfig::default()
        );
        assert!(matches!(
            HostStorageConfig::load(&missing, true),
            Err(StorageError::ReadConfig { .. })
        ));
    }

    #[test]
    fn detect_when_tmpfs_or_ext4_then_dir() {
        let dir = tempfile::tempdir().unwrap();
        // A not-yet-existing root is probed through its parent.
        assert_eq!(detect(&dir.path().join("a/b")).unwrap(), BackendKind::Dir);
    }

    #[test]
    fn mount_source_in_when_zfs_line_then_dataset() {
        // Shape of /proc/self/mountinfo lines (proc(5)); the zfs line's source is the dataset.
        let info = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                    95 22 0:45 / /var/lib/microvms rw,noatime shared:50 - zfs rpool/microvms rw,xattr,posixacl\n\
                    96 22 0:46 / /var/lib/micro\\040vms rw - zfs rpool/spaced rw\n";
        assert_eq!(
            mount_source_in(info, Path::new("/var/lib/microvms")).as_deref(),
            Some("rpool/microvms")
        );
        assert_eq!(
            mount_source_in(info, Path::new("/var/lib/micro vms")).as_deref(),
            Some("rpool/spaced")
        );
        assert_eq!(mount_source_in(info, Path::new("/var/lib")), None);
    }
}
