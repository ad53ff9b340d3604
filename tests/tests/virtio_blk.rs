//! virtio-blk in the lab: L1 makes two raw images on its own file system, tinyvmm gives them
//! to the Debian guest as /dev/vda (read-write, cache "none", serial) and /dev/vdb
//! (read-only). The guest checks size, serial and read-only flag, reads a known pattern,
//! writes and fsyncs, discards a range, and fails to write the read-only disk. Then L1 shows
//! that a second VM cannot open the read-write image (flock), kills tinyvmm with SIGKILL, and
//! checks on the host file what the guest reported as fsynced, plus the read-only image's MD5.
//!
//! A second scenario makes a read-only store image from a directory with `mksquashfs`
//! (squashfs-tools, copied into L1) and has the guest mount it read-only from virtio-blk:
//! file checksums match the tree it was made from, writes fail, the image is unchanged.
//!
//! Needs `cargo build --release` of tinyvmm and kvm-smoke first (the lab copies them).

use std::time::Duration;

use lab::{Lab, Mode, Scenario};

const L2_SCRIPT: &str = r#"
r() { echo "LAB blk1.$*"; }
md5() { md5sum | cut -d' ' -f1; }
r vda_size=$(cat /sys/block/vda/size)
r vdb_size=$(cat /sys/block/vdb/size)
r vda_serial=$(cat /sys/block/vda/serial)
r vda_ro=$(cat /sys/block/vda/ro)
r vdb_ro=$(cat /sys/block/vdb/ro)
r guest_pattern_md5=$(dd if=/dev/vda bs=4096 count=256 2>/dev/null | md5)
r vdb_md5=$(md5 < /dev/vdb)
yes guest-wrote-this | head -c 65536 > /tmp/w
r guest_written_md5=$(md5 < /tmp/w)
dd if=/tmp/w of=/dev/vda bs=4096 seek=512 conv=fsync,notrunc 2>/dev/null
r write_rc=$?
echo 3 > /proc/sys/vm/drop_caches
r readback_md5=$(dd if=/dev/vda bs=4096 skip=512 count=16 2>/dev/null | md5)
dd if=/tmp/w of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null
r ro_write_rc=$?
blkdiscard -o 4194304 -l 1048576 /dev/vda
r discard_rc=$?
sync
r fsynced=1
while :; do sleep 1; done
"#;

const L1_SCRIPT: &str = r#"
md5() { md5sum | cut -d' ' -f1; }
yes tinyvmm-blk-pattern | head -c 8388608 > /tmp/rw.img
yes read-only-volume | head -c 2097152 > /tmp/ro.img
lab-report "blk.host_pattern_md5=$(head -c 1048576 /tmp/rw.img | md5)"
lab-report "blk.ro_md5_before=$(md5 < /tmp/ro.img)"
lab-report "blk.zero_md5=$(head -c 1048576 /dev/zero | md5)"
timeout 300 tinyvmm --log-level info run /lab/blk1.json >/tmp/blk1.log 2>&1 &
pid=$!
i=0
while ! grep -q "LAB blk1.fsynced=1" /tmp/blk1.log && [ $i -lt 3000 ]; do
    sleep 0.1; i=$((i + 1))
done
timeout 60 tinyvmm run /lab/blk2.json >/tmp/blk2.log 2>&1
lab-report "blk.second_exit=$?"
cat /tmp/blk2.log
grep -q "in use by another process" /tmp/blk2.log && lab-report blk.second_locked=1
kill -9 "$pid"
wait "$pid"
lab-report "blk.kill_exit=$?"
cat /tmp/blk1.log
lab-report "blk.host_written_md5=$(dd if=/tmp/rw.img bs=4096 skip=512 count=16 2>/dev/null | md5)"
lab-report "blk.host_discarded_md5=$(dd if=/tmp/rw.img bs=4096 skip=1024 count=256 2>/dev/null | md5)"
lab-report "blk.host_size=$(wc -c < /tmp/rw.img)"
lab-report "blk.ro_md5_after=$(md5 < /tmp/ro.img)"
"#;

fn config(name: &str, volumes: &str) -> String {
    format!(
        r#"{{"name":"{name}","vcpus":1,"memory_mib":256,
"kernel":{{"path":"/lab/l2/vmlinuz","initrd":"/lab/l2/initrd.gz",
"cmdline":"console=ttyS0 reboot=k panic=1 pci=off quiet lab.run={name}"}},
"serial":"stdout","volumes":{volumes}}}"#
    )
}

#[test]
fn lab_blk_when_guest_writes_fsyncs_and_vmm_killed_then_data_on_host_and_read_only_image_intact() {
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let rw =
        r#"{"path":"/tmp/rw.img","read_only":false,"serial":"tinyvmm-rw-0001","cache":"none"}"#;
    let ro = r#"{"path":"/tmp/ro.img","read_only":true}"#;
    let scenario = Scenario::new("virtio-blk")
        .l2_script(L2_SCRIPT)
        .script(L1_SCRIPT)
        .file("/lab/blk1.json", config("blk1", &format!("[{rw},{ro}]")))
        .file("/lab/blk2.json", config("blk2", &format!("[{rw}]")))
        .timeout(Duration::from_secs(420))
        .emulation_retries(1);

    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));

    println!("virtio-blk lab run took {:?}", out.elapsed);
    for (k, v) in &out.kv {
        println!("  {k}={v}");
    }
    let kv = |k: &str| out.get(k).unwrap_or("<missing>").to_string();
    let same = |a: &str, b: &str| {
        assert_eq!(kv(a), kv(b), "{a} vs {b}\n{}", out.output);
        assert_eq!(kv(a).len(), 32, "{a} is no MD5\n{}", out.output);
    };
    out.assert_kv("blk1.vda_size", "16384");
    out.assert_kv("blk1.vdb_size", "4096");
    out.assert_kv("blk1.vda_serial", "tinyvmm-rw-0001");
    out.assert_kv("blk1.vda_ro", "0");
    out.assert_kv("blk1.vdb_ro", "1");
    same("blk1.guest_pattern_md5", "blk.host_pattern_md5");
    same("blk1.vdb_md5", "blk.ro_md5_before");
    out.assert_kv("blk1.write_rc", "0");
    same("blk1.readback_md5", "blk1.guest_written_md5");
    assert_ne!(kv("blk1.ro_write_rc"), "0", "{}", out.output);
    out.assert_kv("blk1.discard_rc", "0");
    out.assert_kv("blk1.fsynced", "1");
    // A second VM cannot open the read-write image while the first runs.
    assert_ne!(kv("blk.second_exit"), "0", "{}", out.output);
    out.assert_kv("blk.second_locked", "1");
    // SIGKILL after the guest's fsync: the data is in the host file, nothing else changed.
    out.assert_kv("blk.kill_exit", "137");
    same("blk.host_written_md5", "blk1.guest_written_md5");
    same("blk.host_discarded_md5", "blk.zero_md5");
    out.assert_kv("blk.host_size", "8388608");
    same("blk.ro_md5_after", "blk.ro_md5_before");
}

const STORE_L2: &str = r#"
r() { echo "LAB store1.$*"; }
sums() { (cd "$1" && find . -type f | sort | xargs md5sum | md5sum | cut -d' ' -f1); }
mkdir -p /store
mount -t squashfs -o ro /dev/vda /store
r mount_rc=$?
r sums=$(sums /store)
r files=$(find /store -type f | wc -l)
r link=$(readlink /store/sub/link)
touch /store/new 2>/dev/null
r touch_rc=$?
r ro_mounts=$(grep -c '^/dev/vda /store squashfs ro' /proc/mounts)
umount /store
"#;

const STORE_L1: &str = r#"
md5() { md5sum | cut -d' ' -f1; }
sums() { (cd "$1" && find . -type f | sort | xargs md5sum | md5sum | cut -d' ' -f1); }
mkdir -p /tmp/tree/sub/deeper
yes store-file-a | head -c 100000 > /tmp/tree/a
echo hello > /tmp/tree/sub/b
head -c 300000 /dev/urandom > /tmp/tree/sub/deeper/c
ln -s ../a /tmp/tree/sub/link
mksquashfs /tmp/tree /tmp/store.img -noappend -all-root -no-progress >/tmp/mksquashfs.log 2>&1
lab-report "store.mksquashfs_rc=$?"
lab-report "store.host_sums=$(sums /tmp/tree)" "store.host_files=$(find /tmp/tree -type f | wc -l)"
before=$(md5 < /tmp/store.img)
timeout 240 tinyvmm --log-level info run /lab/store1.json >/tmp/store1.log 2>&1
lab-report "store.exit=$?"
cat /tmp/store1.log
lab-report "store.img_before=$before" "store.img_after=$(md5 < /tmp/store.img)"
"#;

const MKSQUASHFS: &str = "/usr/bin/mksquashfs";

#[test]
fn lab_store_when_squashfs_image_on_read_only_volume_then_guest_mounts_it_and_checksums_match() {
    assert!(
        std::path::Path::new(MKSQUASHFS).exists(),
        "{MKSQUASHFS} missing: apt-get install squashfs-tools (.ci/lab-packages.txt)"
    );
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let store = r#"[{"path":"/tmp/store.img","read_only":true,"serial":"nix-store"}]"#;
    let scenario = Scenario::new("virtio-blk-store")
        .l2_script(STORE_L2)
        .script(STORE_L1)
        .host_binary(MKSQUASHFS)
        .file("/lab/store1.json", config("store1", store))
        .timeout(Duration::from_secs(300))
        .emulation_retries(1);

    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));

    println!("virtio-blk store lab run took {:?}", out.elapsed);
    for (k, v) in &out.kv {
        println!("  {k}={v}");
    }
    let kv = |k: &str| out.get(k).unwrap_or("<missing>").to_string();
    out.assert_kv("store.mksquashfs_rc", "0");
    out.assert_kv("store1.mount_rc", "0");
    out.assert_kv("store1.ro_mounts", "1");
    assert_eq!(kv("store1.sums"), kv("store.host_sums"), "{}", out.output);
    assert_eq!(kv("store.host_sums").len(), 32, "{}", out.output);
    out.assert_kv("store.host_files", "3");
    out.assert_kv("store1.files", "3");
    out.assert_kv("store1.link", "../a");
    assert_ne!(kv("store1.touch_rc"), "0", "{}", out.output);
    out.assert_kv("store.exit", "0");
    assert_eq!(
        kv("store.img_after"),
        kv("store.img_before"),
        "{}",
        out.output
    );
}
