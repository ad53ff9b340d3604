//! virtio-fs in the lab (`lab::virtiofs`): the Debian guest mounts the examples' shares
//! (`nix-store` read-only, `etc`, `var`) plus a big tree, checks the store's checksums against
//! L1's, that the store refuses writes with EROFS, that writes on the rw shares land on L1's
//! disk with the owner and mode the guest asked for, that paths and symlinks never escape the
//! share, and walks the big tree; every server runs under `ulimit -n 1024`.
//!
//! Needs `cargo build --release --workspace` first (the lab copies the release binaries).

use std::time::Duration;

use lab::virtiofs::{self, Daemon, SHARES};
use lab::{Lab, Mode};

#[test]
fn virtiofs_when_mixing_frontends_and_backends_then_store_mounts_and_checksums_match() {
    let upstream = virtiofs::upstream_virtiofsd();
    let store = &SHARES[..3];
    let mut script = virtiofs::setup_script(1000);
    // Reference: QEMU + upstream virtiofsd (known-good parts).
    script.push_str(&virtiofs::vm_run_script(
        "qup",
        store,
        Some(Daemon::Upstream(upstream)),
        &virtiofs::qemu_command("qup", store, "store,ro"),
        false,
    ));
    // (c) QEMU + `tinyvmm virtiofsd`.
    script.push_str(&virtiofs::vm_run_script(
        "qtiny",
        store,
        Some(Daemon::Tinyvmm),
        &virtiofs::qemu_command("qtiny", store, "store,ro"),
        false,
    ));
    // (b) tinyvmm's frontend + upstream virtiofsd on external sockets (`{"tag","socket"}`).
    script.push_str(&virtiofs::vm_run_script(
        "tup",
        store,
        Some(Daemon::Upstream(upstream)),
        "tinyvmm --log-level info run /lab/tup.json",
        false,
    ));
    let tags: Vec<&str> = store.iter().map(|s| s.tag).collect();
    let tup_json = virtiofs::tinyvmm_config(
        "tup",
        &virtiofs::socket_shares("tup", store),
        &tags,
        "store,ro",
    );
    let mut scenario = virtiofs::scenario("virtiofs-interop", &script, Duration::from_secs(900))
        .host_binary("/usr/bin/qemu-system-x86_64")
        .host_binary(upstream)
        .file("/lab/tup.json", tup_json.into_bytes());
    for fw in virtiofs::qemu_firmware() {
        scenario = scenario.file(
            fw,
            std::fs::read(fw).unwrap_or_else(|e| panic!("{fw}: {e}")),
        );
    }
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));
    println!("virtiofs interop: lab run {:?}", out.elapsed);
    for run in ["qup", "qtiny", "tup"] {
        for (k, v) in out
            .kv
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{run}.")))
        {
            println!("  {k}={v}");
        }
    }
    for run in ["qup", "qtiny", "tup"] {
        out.assert_kv(&format!("{run}.mounted"), "3");
        if run != "tup" {
            // tinyvmm's own exit status says how its guest ended; QEMU's (-no-reboot) does not.
            out.assert_kv(&format!("{run}.l2_finished"), "yes");
        }
        let files = out.get("host.store_files").expect("host.store_files");
        out.assert_kv(&format!("{run}.store_md5_ok"), files);
        out.assert_kv(&format!("{run}.store_md5_bad"), "0");
        out.assert_kv(&format!("{run}.store_links"), "same");
        out.assert_kv(&format!("{run}.ro_creat"), "EROFS");
        out.assert_kv(&format!("{run}.exit"), "0");
        out.assert_kv(&format!("{run}.servers"), "3");
        out.assert_kv(&format!("{run}.server_nofile"), "1024,1024,1024,");
    }
}
