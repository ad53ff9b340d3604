//! The `attach_block` step with the real `tinyvmm` binary on this machine's /dev/kvm (tiny
//! freestanding guest; the lab boots Linux against the device).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tinyvmm_benches::build_guest;

fn config(dir: &Path, name: &str, kernel: &Path, image: &Path) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    let json = format!(
        r#"{{"name":"{name}","vcpus":1,"memory_mib":64,"kernel":{{"path":"{}"}},"serial":"none",
"volumes":[{{"path":"{}","read_only":false,"serial":"pvm"}}]}}"#,
        kernel.display(),
        image.display()
    );
    std::fs::write(&path, json).unwrap();
    path
}

fn run(dir: &Path, cfg: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinyvmm"))
        .arg("run")
        .arg(cfg)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tinyvmm did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    path
}

#[test]
fn run_when_volume_configured_then_device_attached_and_guest_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = build_guest("poweroff", dir.path()).unwrap();
    let cfg = config(dir.path(), "blk", &kernel, &image(dir.path()));

    let out = run(dir.path(), &cfg);

    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn run_when_volume_locked_by_another_process_then_error_names_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = build_guest("poweroff", dir.path()).unwrap();
    let img = image(dir.path());
    let holder = std::fs::File::open(&img).unwrap();
    // SAFETY: flock on a file descriptor this test owns.
    let rc = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0);
    let cfg = config(dir.path(), "blklocked", &kernel, &img);

    let out = run(dir.path(), &cfg);

    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("open volume 0 for virtio-blk"), "{err}");
    assert!(err.contains("in use by another process"), "{err}");
    drop(holder);
}
