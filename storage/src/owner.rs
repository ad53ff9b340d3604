//! The configured owner (`user[:group]`) of VM directories.

use std::ffi::{CStr, CString};
use std::path::Path;

use crate::error::{io_err, Result, StorageError};

/// A resolved owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Resolves `user[:group]`; each part is a name or a numeric id. Without a group, the
    /// user's primary group is used.
    pub fn resolve(spec: &str) -> Result<Owner> {
        let err = |reason: String| StorageError::ResolveOwner {
            spec: spec.to_string(),
            reason,
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() || group == Some("") {
            return Err(err("expected user[:group]".into()));
        }
        let (uid, primary_gid) = match user.parse::<u32>() {
            Ok(uid) => (uid, lookup_user_by_uid(uid).map(|(_, gid)| gid)),
            Err(_) => {
                let (uid, gid) =
                    lookup_user(user).ok_or_else(|| err(format!("no user {user:?}")))?;
                (uid, Some(gid))
            }
        };
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => lookup_group(g).ok_or_else(|| err(format!("no group {g:?}")))?,
            },
            None => primary_gid.ok_or_else(|| {
                err(format!(
                    "uid {uid} has no passwd entry; give the group explicitly"
                ))
            })?,
        };
        Ok(Owner { uid, gid })
    }

    /// Sets the owner of `path` (not following symlinks).
    pub fn apply(self, path: &Path) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(io_err("chown", path))
    }
}

/// (uid, gid) of a user name, via getpwnam_r.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    passwd_lookup(|pw, buf, res| {
        // SAFETY: all pointers are valid for the call; buf has buf.len() writable bytes.
        unsafe { libc::getpwnam_r(c.as_ptr(), pw, buf.as_mut_ptr(), buf.len(), res) }
    })
}

/// (uid, gid) of a uid, via getpwuid_r.
fn lookup_user_by_uid(uid: u32) -> Option<(u32, u32)> {
    passwd_lookup(|pw, buf, res| {
        // SAFETY: all pointers are valid for the call; buf has buf.len() writable bytes.
        unsafe { libc::getpwuid_r(uid, pw, buf.as_mut_ptr(), buf.len(), res) }
    })
}

fn passwd_lookup(
    call: impl Fn(*mut libc::passwd, &mut [libc::c_char], *mut *mut libc::passwd) -> libc::c_int,
) -> Option<(u32, u32)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value of this plain C struct.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    let rc = call(&mut pw, &mut buf, &mut res);
    if rc != 0 || res.is_null() {
        return None;
    }
    Some((pw.pw_uid, pw.pw_gid))
}

/// gid of a group name, via getgrnam_r.
fn lookup_group(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: an all-zero group is a valid value of this plain C struct.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf has buf.len() writable bytes.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    Some(gr.gr_gid)
}

/// The name of a uid, for messages (falls back to the number).
pub fn user_name(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value of this plain C struct.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf has buf.len() writable bytes.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if rc != 0 || res.is_null() || pw.pw_name.is_null() {
        return uid.to_string();
    }
    // SAFETY: on success pw_name points at a NUL-terminated string inside buf.
    unsafe { CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_when_root_by_name_or_number_then_zero() {
        assert_eq!(Owner::resolve("root").unwrap(), Owner { uid: 0, gid: 0 });
        assert_eq!(Owner::resolve("0:0").unwrap(), Owner { uid: 0, gid: 0 });
        assert_eq!(Owner::resolve("root:0").unwrap(), Owner { uid: 0, gid: 0 });
    }

    #[test]
    fn resolve_when_numeric_pair_without_passwd_entry_then_used_as_is() {
        assert_eq!(
            Owner::resolve("4242:4343").unwrap(),
            Owner {
                uid: 4242,
                gid: 4343
            }
        );
    }

    #[test]
    fn resolve_when_unknown_or_malformed_then_error() {
        for spec in [
            "no-such-user-xyz",
            "root:no-such-group-xyz",
            "",
            ":0",
            "root:",
            "4242",
        ] {
            assert!(
                matches!(Owner::resolve(spec), Err(StorageError::ResolveOwner { .. })),
                "{spec:?}"
            );
        }
    }

    #[test]
    fn user_name_when_root_then_root() {
        assert_eq!(user_name(0), "root");
    }
}
