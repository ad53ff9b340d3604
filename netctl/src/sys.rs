//! Host facts and knobs: sysctl via /proc, capabilities, the network namespace identity.

use std::os::unix::fs::MetadataExt;

use crate::error::{Error, Result};

pub const IP_FORWARD: &str = "net/ipv4/ip_forward";

pub fn sysctl_read(key: &str) -> Result<String> {
    std::fs::read_to_string(format!("/proc/sys/{key}"))
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Sysctl {
            key: key.replace('/', "."),
            source,
        })
}

pub fn sysctl_write(key: &str, value: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value).map_err(|source| Error::Sysctl {
        key: key.replace('/', "."),
        source,
    })
}

/// CAP_NET_ADMIN in the effective set (from /proc/self/status `CapEff`).
pub fn has_cap_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// (device, inode) of this thread's network namespace: unique while it exists.
pub fn netns_id() -> Result<(u64, u64)> {
    let m = std::fs::metadata("/proc/thread-self/ns/net").map_err(Error::NetnsId)?;
    Ok((m.dev(), m.ino()))
}

/// Test guard: when NETCTL_TEST_NETNS names a namespace (as in /run/netns/NAME), refuse to
/// change anything unless we are inside exactly that namespace.
pub fn check_test_netns() -> Result<()> {
    let Ok(name) = std::env::var("NETCTL_TEST_NETNS") else {
        return Ok(());
    };
    let wrong = || Error::WrongNetns {
        expected: name.clone(),
    };
    let want = std::fs::metadata(format!("/run/netns/{name}")).map_err(|_| wrong())?;
    let have = netns_id()?;
    if (want.dev(), want.ino()) == have {
        Ok(())
    } else {
        Err(wrong())
    }
}

/// Failure injection for tests (debug builds only): NETCTL_FAIL_AT=<step>.
/// `exit:<step>` kills the process at that step without any rollback (a crash).
pub fn fail_point(step: &str) -> Result<()> {
    if !cfg!(debug_assertions) {
        return Ok(());
    }
    match std::env::var("NETCTL_FAIL_AT") {
        Ok(v) if v == step => Err(Error::Injected(step.to_string())),
        Ok(v) if v.strip_prefix("exit:") == Some(step) => {
            eprintln!("netctl: injected crash at {step}");
            std::process::exit(99)
        }
        _ => Ok(()),
    }
}
