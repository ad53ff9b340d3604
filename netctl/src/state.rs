//! What netctl created in one network namespace, so `down` removes exactly that.
//!
//! One JSON file per namespace: `$NETCTL_STATE_DIR` (default `/run/netctl`) /
//! `state-<nsdev>-<nsino>.json`. It is written *before* links are created (an intent log),
//! so even a crash mid-apply leaves a record of every link netctl may have made.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Cidr, Host, VmNet};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Host settings of the last apply (defaults for the next one).
    pub host: Option<Host>,
    /// Every managed VM network.
    pub nets: Vec<VmNet>,
    /// Links netctl created (and so may delete).
    pub created_links: BTreeSet<String>,
    /// Addresses netctl added to links it did not create: (link, address).
    pub added_addrs: BTreeSet<(String, Cidr)>,
    /// net.ipv4.ip_forward before netctl first set it, restored when the last VM goes.
    pub ip_forward_before: Option<String>,
    /// [`crate::nft::Installed::digest`] right after netctl loaded its ruleset.
    #[serde(default)]
    pub ruleset_digest: Option<String>,
}

pub fn default_path() -> Result<PathBuf> {
    let dir = std::env::var_os("NETCTL_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/netctl"));
    let (dev, ino) = crate::sys::netns_id()?;
    Ok(dir.join(format!("state-{dev}-{ino}.json")))
}

fn err(path: &Path, msg: impl ToString) -> Error {
    Error::State {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// An exclusive flock on the state directory, held while a command changes the host, so two
/// netctl runs cannot interleave. (Locking the directory leaves no lock file behind.)
pub struct StateLock(#[allow(dead_code)] std::fs::File);

impl StateLock {
    pub fn acquire(state_path: &Path) -> Result<StateLock> {
        use std::os::fd::AsRawFd;
        let dir = state_path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let f = std::fs::File::open(dir).map_err(|e| err(dir, e))?;
        loop {
            // SAFETY: flock only uses the fd, which `f` keeps open during the call.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(StateLock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(err(dir, e));
            }
        }
    }
}

impl State {
    /// Reads the state; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| err(path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(err(path, e)),
        }
    }

    /// Writes atomically (temp file + rename); an empty state removes the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.nets.is_empty() && self.created_links.is_empty() && self.added_addrs.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(path, e)),
                _ => Ok(()),
            };
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| err(path, e))?;
        std::fs::write(&tmp, text).map_err(|e| err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| err(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_when_saved_and_loaded_then_equal_and_empty_removes_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        assert_eq!(State::load(&p).unwrap(), State::default());
        let mut s = State::default();
        s.created_links.insert("br-vm1".into());
        s.ip_forward_before = Some("0".into());
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), s);
        State::default().save(&p).unwrap();
        assert!(!p.exists());
    }
}
