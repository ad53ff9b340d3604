//! A real root on virtio-fs (issue 9): the L2 guest boots with `rootfstype=virtiofs root=root`
//! from a Debian bookworm tree built with mmdebstrap (cached, see `lab::rootfs`), served by
//! tinyvmm's embedded virtio-fs server, and runs Debian's own init (sysvinit), whose
//! /etc/rc.local reports `LAB root.*=` lines and powers off.
//!
//! Path of the tree: host cache → ext4 image (`mkfs.ext4 -d`) → L1's virtio-blk drive /dev/vda
//! (snapshot: writes are discarded) → mounted on /root-disk in L1 → shared by tinyvmm.
//!
//! The L2 initramfs is the lab's cached one (busybox + the virtio/fuse/virtiofs modules) with
//! this test's init as /scenario.sh, started as PID 1 with `rdinit=`: it loads the modules,
//! mounts `root=` with `rootfstype=` from the kernel command line and `switch_root`s to
//! Debian's /sbin/init. Debian's initramfs-tools is not used.

use std::time::Duration;

use lab::{rootfs, Lab, Mode, Scenario};

/// PID 1 of the L2 initramfs (appended as /scenario.sh; `rdinit=/scenario.sh`).
const L2_ROOT_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox devmem 0xd0000000 8 123
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
failed=""
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" 2>/dev/null || failed="$failed,$m"
done
echo "LAB l2.init_uptime=$(cut -d' ' -f1 /proc/uptime) l2.modules=${failed:-ok}"
root=""; fstype=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) fstype="${arg#rootfstype=}" ;;
    esac
done
mkdir -p /newroot
if ! mount -t "$fstype" -o rw "$root" /newroot; then
    echo "LAB root.mount=failed"
    poweroff -f
fi
echo "LAB root.mount=ok root.switch_uptime=$(cut -d' ' -f1 /proc/uptime)"
umount /sys
mount --move /dev /newroot/dev
umount /proc
exec switch_root /newroot /sbin/init
"#;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet \
                       rdinit=/scenario.sh rootfstype=virtiofs root=root rw";

/// L1: mount the root disk, give the suites a rw scratch share, boot L2 with tinyvmm.
const L1_SCRIPT: &str = r#"
modprobe virtio_pci && modprobe virtio_blk || lab-report root.l1_blk=failed
mkdir -p /root-disk /suite
mount -t ext4 /dev/vda /root-disk || { lab-report root.l1_mount=failed; exit 1; }
mount -t tmpfs -o size=256m tmpfs /suite
cp /lab/suite/fsx /lab/suite/run-suites /suite/
t0=$(cut -d' ' -f1 /proc/uptime)
timeout 600 tinyvmm run /lab/root.json > /tmp/l2.log 2>&1
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
cat /tmp/l2.log
lab-report root.l2_exit=$rc root.l2_wall_s=$(echo "$t0 $t1" | awk '{print $2 - $1}')
"#;

/// Run by the Debian root's rc.local from the rw share: fsx (seeded, N operations) on a file
/// of the share.
const RUN_SUITES: &str = r#"#!/bin/sh
d="$1"
if "$d/fsx" -N 2000 -S 1 -P "$d" "$d/fsx.data" > "$d/fsx.log" 2>&1; then
    echo "LAB root.fsx=pass"
else
    echo "LAB root.fsx=fail"
    tail -n 20 "$d/fsx.log"
fi
"#;

fn vm_config() -> String {
    format!(
        r#"{{"name":"root","vcpus":1,"memory_mib":512,"rng":false,"boot_timer":true,
"kernel":{{"path":"/lab/l2/vmlinuz","initrd":"/lab/l2/initrd.gz","cmdline":"{CMDLINE}"}},
"serial":"stdout",
"shares":[{{"tag":"root","source":"/root-disk"}},{{"tag":"suite","source":"/suite"}}]}}"#
    )
}

#[test]
fn virtiofs_root_when_booted_then_debian_init_runs_from_virtiofs() {
    // Arrange
    // The root first: its cold build (~1 min, network) must not hold the lab lock.
    let dirs = lab::paths::LabDirs::discover().unwrap_or_else(|e| panic!("{e}"));
    let root = rootfs::prepare(&dirs.lab).unwrap_or_else(|e| panic!("{e}"));
    let fsx = rootfs::prepare_fsx(&dirs.lab).unwrap_or_else(|e| panic!("{e}"));
    let fsx = std::fs::read(&fsx).unwrap_or_else(|e| panic!("{}: {e}", fsx.display()));
    let lab = Lab::new(Mode::Fast).unwrap_or_else(|e| panic!("{e}"));
    let scenario = Scenario::new("virtiofs-root")
        .script(L1_SCRIPT)
        .l2_script(L2_ROOT_INIT)
        .file("/lab/root.json", vm_config())
        .executable("/lab/suite/fsx", fsx)
        .executable("/lab/suite/run-suites", RUN_SUITES)
        .drive(&root.image)
        .timeout(Duration::from_secs(900))
        .emulation_retries(1);

    // Act
    let out = lab.run(&scenario).unwrap_or_else(|e| panic!("{e}"));

    // Assert
    out.assert_kv("root.mount", "ok");
    out.assert_kv("root.init", "init");
    out.assert_kv("root.fstype", "virtiofs");
    out.assert_kv("root.fsx", "pass");
    out.assert_kv("root.done", "1");
    out.assert_kv("root.l2_exit", "0");
}
