//! systemd readiness notification (`sd_notify(3)`): `READY=1` when the guest reaches init.
//!
//! The protocol is one datagram of `KEY=VALUE` lines sent to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). That is a single
//! `sendto`, which `std::os::unix::net::UnixDatagram` does, abstract addresses included, so we
//! write it here instead of adding the `sd-notify` crate (same few lines, one dependency less).
//!
//! "Ready" means the guest wrote the boot timer (`0xd0000000`, value 123): the guest's init
//! does that once it runs (the NixOS guest module ships a unit for it). A VM whose guest never
//! writes it stays "activating" until systemd's `TimeoutStartSec`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an @abstract name")]
    BadAddress(String),
    #[error("create the notification socket")]
    CreateSocket(#[source] io::Error),
    #[error("resolve the notification socket address {0:?}")]
    ResolveAddress(String, #[source] io::Error),
    #[error("send to the notification socket {0:?}")]
    Send(String, #[source] io::Error),
}

/// Whether systemd (or anything speaking its protocol) asked for notifications.
pub fn enabled() -> bool {
    std::env::var_os(NOTIFY_SOCKET_ENV).is_some_and(|v| !v.is_empty())
}

/// Sends `state` (e.g. `"READY=1\nSTATUS=guest reached init"`) to `$NOTIFY_SOCKET`.
/// Returns `Ok(false)` when the variable is not set (not run by systemd).
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var(NOTIFY_SOCKET_ENV) {
        Ok(addr) if !addr.is_empty() => send_to(&addr, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends one notification datagram to `addr` (`/path` or `@abstract`).
pub fn send_to(addr: &str, state: &str) -> Result<(), NotifyError> {
    let sock_addr = if let Some(name) = addr.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if addr.starts_with('/') {
        SocketAddr::from_pathname(addr)
    } else {
        return Err(NotifyError::BadAddress(addr.to_string()));
    }
    .map_err(|e| NotifyError::ResolveAddress(addr.to_string(), e))?;
    let sock = UnixDatagram::unbound().map_err(NotifyError::CreateSocket)?;
    sock.send_to_addr(state.as_bytes(), &sock_addr)
        .map_err(|e| NotifyError::Send(addr.to_string(), e))?;
    Ok(())
}

/// Sends `READY=1` the first time it is called (the boot timer may be written again after a
/// guest-internal kexec or by a misbehaving guest; systemd needs it once). Failures are logged,
/// not fatal: the VM keeps running.
pub fn ready_once(flag: &AtomicBool, boot_us: u128) {
    if flag.swap(true, Ordering::SeqCst) {
        return;
    }
    let state = format!(
        "READY=1\nSTATUS=guest reached init after {} ms",
        boot_us / 1000
    );
    match notify(&state) {
        Ok(true) => log::info!("notified systemd: READY=1"),
        Ok(false) => {}
        Err(e) => log::warn!("sd_notify READY=1: {}", crate::cli::error_chain(&e)),
    }
}

/// Tells systemd that the VM is shutting down (`STOPPING=1`), if it asked for notifications.
pub fn stopping() {
    if let Err(e) = notify("STOPPING=1") {
        log::warn!("sd_notify STOPPING=1: {}", crate::cli::error_chain(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_to_when_path_socket_then_datagram_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();

        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=x").unwrap();

        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
    }

    #[test]
    fn send_to_when_abstract_socket_then_datagram_arrives() {
        let name = format!("tinyvmm-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();

        send_to(&format!("@{name}"), "READY=1").unwrap();

        let mut buf = [0u8; 16];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn send_to_when_relative_or_missing_then_error() {
        assert!(matches!(
            send_to("relative.sock", "READY=1"),
            Err(NotifyError::BadAddress(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        assert!(matches!(
            send_to(missing.to_str().unwrap(), "READY=1"),
            Err(NotifyError::Send(..))
        ));
    }
}
