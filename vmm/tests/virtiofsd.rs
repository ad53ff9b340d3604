//! `tinyvmm virtiofsd` as a separate process, driven by the VMM's virtio-fs frontend: the
//! upstream-style flags (`--socket-path`, `--fd`), its exit when the VMM disconnects, and the
//! frontend's handling of a backend that dies.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::features::VIRTIO_F_VERSION_1;
use devices::virtio::fs::Fs;
use devices::virtio::VirtioDevice;
use event_manager::{EventManager, SubscriberOps};
use virtio_queue::QueueT;

const TIMEOUT: Duration = Duration::from_secs(10);

fn virtiofsd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tinyvmm"));
    cmd.arg("virtiofsd")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Waits for `child` to exit; kills it and panics after `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("virtiofsd did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects once `socket` exists (the daemon binds it after it starts).
fn connect(child: &mut Child, socket: &Path) -> Fs {
    let start = Instant::now();
    while !socket.exists() {
        if start.elapsed() > TIMEOUT || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("virtiofsd did not create {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Fs::connect("data", socket).unwrap()
}

#[test]
fn virtiofsd_when_socket_path_given_then_serves_one_frontend_and_exits_0_after_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    let mut child = virtiofsd()
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(dir.path())
        .args([
            "--sandbox",
            "none",
            "--cache",
            "auto",
            "--thread-pool-size",
            "4",
        ])
        .arg("--xattr")
        .arg("--readonly")
        .spawn()
        .unwrap();

    let fs = connect(&mut child, &socket);
    assert_ne!(fs.avail_features() & VIRTIO_F_VERSION_1, 0);
    drop(fs);

    assert!(wait_exit(&mut child, TIMEOUT).success());
}

/// The chroot sandbox hides /proc, which the server needs to reopen inodes for I/O: it must
/// keep a /proc/self/fd handle from before the chroot (it used to fail at startup).
#[test]
fn virtiofsd_when_sandbox_chroot_then_serves_from_inside_the_share() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "needs root: --sandbox chroot falls back to none otherwise"
    );
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let socket = dir.path().join("fs.sock");
    let mut child = virtiofsd()
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&share)
        .args(["--sandbox", "chroot"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    let fs = connect(&mut child, &socket);
    drop(fs);

    let status = wait_exit(&mut child, TIMEOUT);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("/proc/self/fd"), "{stderr}");
}

#[test]
fn virtiofsd_when_fd_given_then_serves_the_inherited_listener() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = virtiofsd();
    cmd.arg("--fd")
        .arg(fd.to_string())
        .arg("--shared-dir")
        .arg(dir.path())
        .args(["--sandbox", "none"]);
    // SAFETY: only fcntl, async-signal-safe, on an fd this process owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);

    let fs = Fs::connect("data", &socket).unwrap();
    drop(fs);

    assert!(wait_exit(&mut child, TIMEOUT).success());
}

#[test]
fn virtiofsd_when_fd_is_not_a_listening_socket_then_error_names_it() {
    let dir = tempfile::tempdir().unwrap();

    let out = virtiofsd()
        .args(["--fd", "99", "--sandbox", "none", "--shared-dir"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();

    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--fd 99"), "{err}");
}

#[test]
fn frontend_when_backend_process_dies_then_device_marked_broken_and_activation_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    let mut child = virtiofsd()
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(dir.path())
        .args(["--sandbox", "none"])
        .spawn()
        .unwrap();
    let fs = Arc::new(Mutex::new(connect(&mut child, &socket)));
    let mut events = EventManager::<Arc<Mutex<Fs>>>::new().unwrap();
    events.add_subscriber(fs.clone());

    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    while !fs.lock().unwrap().is_broken() {
        assert!(start.elapsed() < TIMEOUT, "hang-up not noticed");
        events.run_with_timeout(100).unwrap();
    }

    let mem = arch::memory::create_guest_memory(2 << 20, false).unwrap();
    let interrupt = Arc::new(devices::virtio::VirtioInterrupt::new(Arc::new(
        vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
    )));
    let queues = (0..2)
        .map(|_| virtio_queue::Queue::new(1024).unwrap())
        .collect();
    let evts = (0..2)
        .map(|_| vmm_sys_util::eventfd::EventFd::new(0).unwrap())
        .collect();
    let err = fs
        .lock()
        .unwrap()
        .activate(devices::virtio::ActivateArgs {
            mem,
            queues,
            queue_evts: evts,
            interrupt,
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap_err();
    assert!(
        vmm::cli::error_chain(&err).contains("disconnected"),
        "{err:?}"
    );
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn server_when_spawning_thread_exits_then_killed_by_parent_death_signal_despite_open_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Connected and kept open: the server never sees a disconnect, so only the parent-death
    // signal can end it.
    let _stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let spec = vmm::virtiofsd::ShareSpec {
        fd: listener.as_raw_fd(),
        dir: dir.path().to_owned(),
        read_only: false,
        tag: "data".into(),
    };
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let spawner = std::thread::spawn(move || {
        let exe = Path::new(env!("CARGO_BIN_EXE_tinyvmm"));
        let child = vmm::fs_server::spawn_server(exe, &[spec])
            .unwrap()
            .into_child()
            .unwrap();
        pid_tx.send(child).unwrap();
        let _ = go_rx.recv_timeout(TIMEOUT);
    });
    let mut child = pid_rx.recv_timeout(TIMEOUT).unwrap();
    let pid = child.id();
    let exec_done = wait_for(TIMEOUT, || {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"virtiofsd"))
    });
    assert!(exec_done && alive(pid), "server running");
    drop(listener);

    go_tx.send(()).unwrap();
    spawner.join().unwrap();

    let died = wait_for(TIMEOUT, || !alive(pid));
    if !died {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(died, "server outlived its parent thread");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}
