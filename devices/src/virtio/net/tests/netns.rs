//! Throwaway network namespaces for tests that need a real TAP.
//!
//! Each [`NetNs`] is a fresh namespace (`ip netns add tvmm-net-<pid>-<n>`), deleted on drop
//! even when the test fails. Code that must run inside it (opening TAPs, sockets) runs on a
//! dedicated thread that `setns`es into it; the switch affects that thread only, and the
//! file descriptors it creates stay bound to the namespace. Nothing here touches the root
//! namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub(crate) struct NetNs {
    name: String,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (iproute2 installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {} -- these tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) \
         to create network namespaces",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl NetNs {
    /// Creates the namespace; panics (the test fails loudly) if it cannot.
    pub(crate) fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("tvmm-net-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        // No IPv6: the kernel would otherwise send router solicitations and MLD reports
        // through every TAP that comes up, mixing unrelated frames into the tests.
        ns.exec(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        ns
    }

    /// `ip -n <ns> ARGS...`; returns stdout.
    pub(crate) fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip netns exec <ns> ARGS...`; returns stdout.
    pub(crate) fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_this_thread();
                f()
            })
            .join()
            .unwrap_or_else(|_| panic!("the thread inside {} panicked", self.name))
        })
    }

    fn enter_this_thread(&self) {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a namespace file we hold open; it changes the network namespace
        // of the calling thread only.
        let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "setns into {path}: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// Removes CAP_NET_ADMIN from the calling thread (capabilities are per thread), so that it
/// acts like the unprivileged user tinyvmm normally runs as.
pub(crate) fn drop_net_admin_in_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` entries (version 3) into `data` and reads `header`;
    // both outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(ret, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    data[0].permitted &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above; capset reads `header` and two `Data` entries, for this thread only.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(ret, 0, "capset: {}", std::io::Error::last_os_error());
}
