//! The lab's virtio-fs scenario: one L1 setup (a store-like tree at /nix/store, per-VM writable
//! `etc` and `var` under /var/lib/microvms/vm1, a big tree for walks, a secret outside every
//! share), one guest script run in L2's busybox, and the L1 checks after the guest is gone.
//! The same guest script runs under every frontend (tinyvmm, QEMU microvm) and every backend
//! (tinyvmm's embedded server, `tinyvmm virtiofsd`, upstream virtiofsd), so they are measured
//! and checked identically.
//!
//! The guest takes its run name from `lab.run=<run>` and its checks from `lab.fs=<a,b,...>`
//! (`store`, `ro`, `rw`, `escape`, `big`, `kill`) on its kernel command line and reports
//! `LAB <run>.<key>=<value>`; L1 reports `LAB <run>.host_<key>=<value>`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The helper's C source (see its header for the commands).
pub const FSPROBE_C: &str = include_str!("virtiofs/fsprobe.c");

/// Where L1 keeps the helper, and where the guest finds it (on the store share).
pub const FSPROBE_L1: &str = "/lab/bin/fsprobe";

/// One share of the lab VM.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    /// The virtio-fs tag.
    pub tag: &'static str,
    /// The directory in L1.
    pub source: &'static str,
    /// Where the guest mounts it.
    pub mount: &'static str,
    /// Served read-only.
    pub read_only: bool,
}

/// The examples' three shares plus the big tree.
pub const SHARES: [Share; 4] = [
    Share {
        tag: "nix-store",
        source: "/nix/store",
        mount: "/mnt/store",
        read_only: true,
    },
    Share {
        tag: "etc",
        source: "/var/lib/microvms/vm1/etc",
        mount: "/mnt/etc",
        read_only: false,
    },
    Share {
        tag: "var",
        source: "/var/lib/microvms/vm1/var",
        mount: "/mnt/var",
        read_only: false,
    },
    Share {
        tag: "big",
        source: "/srv/big",
        mount: "/mnt/big",
        read_only: true,
    },
];

/// Compiles the helper as a static binary (gcc and glibc's libc.a, Debian `libc6-dev`).
pub fn build_fsprobe() -> std::io::Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("lab-fsprobe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let src: PathBuf = dir.join("fsprobe.c");
    let bin: PathBuf = dir.join("fsprobe");
    std::fs::write(&src, FSPROBE_C)?;
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "gcc fsprobe.c: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let data = std::fs::read(&bin)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(data)
}

/// L1 setup: the store-like tree (20 packages of 15 files: libraries with .so symlinks,
/// executables, nested docs, plus a 16 MiB file and the helper), its md5 list and symlink list
/// on the `etc` share, the big tree of `big_files` files in `big_files / 100` directories, and
/// `/lab-secret` outside every share. Reports `host.store_files`, `host.big_entries` and the
/// seconds the big tree took.
pub fn setup_script(big_files: u32) -> String {
    let big_dirs = (big_files / 100).max(1);
    format!(
        r#"
set -u
S=/nix/store; E=/var/lib/microvms/vm1/etc; V=/var/lib/microvms/vm1/var
mkdir -p $S $E $V /srv
echo HOST-SECRET-7f3a > /lab-secret
i=0
while [ $i -lt 20 ]; do
    p=$S/$(echo pkg$i | md5sum | cut -c1-32)-pkg$i
    mkdir -p $p/bin $p/lib $p/share/doc/pkg$i/a/b/c
    j=0
    while [ $j -lt 10 ]; do
        head -c $(( (i * 37 + j * 1013) % 65536 + 1 )) /dev/urandom > $p/share/doc/pkg$i/a/b/c/f$j
        j=$((j + 1))
    done
    head -c $(( 4096 + i * 1500 )) /dev/urandom > $p/lib/libpkg$i.so.1
    ln -s libpkg$i.so.1 $p/lib/libpkg$i.so
    printf '#!/bin/sh\necho pkg%s\n' $i > $p/bin/tool$i
    chmod 755 $p/bin/tool$i
    echo "pkg$i" > $p/share/doc/pkg$i/README
    ln -s ../lib/libpkg$i.so.1 $p/bin/lib-link
    i=$((i + 1))
done
mkdir -p $S/00000000000000000000000000000000-fsprobe/bin $S/ffffffffffffffffffffffffffffffff-big
cp {FSPROBE_L1} $S/00000000000000000000000000000000-fsprobe/bin/fsprobe
head -c 16777216 /dev/urandom > $S/ffffffffffffffffffffffffffffffff-big/data.bin
(cd $S && find . -type f | sort | xargs md5sum) > $E/store.md5
(cd $S && find . -type l | sort | while read l; do echo "$l $(readlink $l)"; done) > $E/store.links
ln -s / $E/rootlink
ln -s ../../../../../../lab-secret $E/uplink
ln -s /lab-secret $E/abslink
lab-report host.store_files=$(wc -l < $E/store.md5) host.store_links=$(wc -l < $E/store.links)
t0=$(cut -d' ' -f1 /proc/uptime)
{FSPROBE_L1} mktree /srv/big {big_files} {big_dirs}
t1=$(cut -d' ' -f1 /proc/uptime)
lab-report host.big_entries=$(( {big_files} + {big_dirs} + 1 )) host.big_mktree_s=$(echo "$t0 $t1" | awk '{{print $2 - $1}}')
"#
    )
}

/// The guest script (L2 busybox). Mounts every tag of `lab.tags=` (comma-separated) at its
/// [`SHARES`] mount point, then runs the checks of `lab.fs=`.
pub const GUEST_SCRIPT: &str = r#"
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
run=$(arg lab.run); checks=,$(arg lab.fs),
r() { l=LAB; for kv in "$@"; do l="$l $run.$kv"; done; echo "$l"; }
has() { case "$checks" in *,$1,*) return 0;; esac; return 1; }
now() { cut -d' ' -f1 /proc/uptime; }
secs() { echo "$1 $(now)" | awk '{print $2 - $1}'; }
mnt() { case $1 in nix-store) echo /mnt/store;; *) echo /mnt/$1;; esac; }
mounted=0
for t in $(arg lab.tags | tr , ' '); do
    mkdir -p $(mnt $t)
    mount -t virtiofs $t $(mnt $t) && mounted=$((mounted + 1)) || r mount_$t=failed
done
r mounted=$mounted
F=/mnt/store/00000000000000000000000000000000-fsprobe/bin/fsprobe
if has store; then
    t0=$(now)
    out=$(cd /mnt/store && md5sum -c /mnt/etc/store.md5 2>&1)
    r store_md5_ok=$(echo "$out" | grep -c ': OK$') store_md5_bad=$(echo "$out" | grep -vc ': OK$') store_md5_s=$(secs $t0)
    (cd /mnt/store && find . -type l | sort | while read l; do echo "$l $(readlink $l)"; done) > /tmp/links
    cmp -s /tmp/links /mnt/etc/store.links && r store_links=same || r store_links=differ
    r store_exec=$(/mnt/store/*-pkg3/bin/tool3)
    $F try creat /tmp/x >/dev/null && r store_fsprobe=ok || r store_fsprobe=failed
fi
if has ro; then
    f=$(ls -d /mnt/store/*-pkg1)/share/doc/pkg1/README
    touch /mnt/store/new 2>/dev/null && r ro_touch=succeeded || r ro_touch=failed
    r ro_creat=$($F try creat /mnt/store/new) ro_mkdir=$($F try mkdir /mnt/store/newdir) \
      ro_unlink=$($F try unlink $f) ro_chmod=$($F try chmod $f 777) \
      ro_rename=$($F try rename $f /mnt/store/moved) ro_setxattr=$($F try setxattr $f user.x y) \
      ro_symlink=$($F try symlink x /mnt/store/sl) ro_truncate=$($F try truncate $f)
fi
if has rw; then
    V=/mnt/var
    echo hello-virtiofs > $V/a && mv $V/a $V/b && r rw_write_rename=ok || r rw_write_rename=failed
    r rw_fsync=$($F fsync $V/synced payload-synced)
    echo x > $V/gone && rm $V/gone && r rw_unlink=ok || r rw_unlink=failed
    mkdir -p $V/dir/sub && echo n > $V/dir/sub/n && r rw_mkdir=ok || r rw_mkdir=failed
    chmod 640 $V/b && r rw_chmod=ok || r rw_chmod=failed
    chown 1234:5678 $V/b && r rw_chown=ok || r rw_chown=failed
    # trusted.*: L1's shares are on tmpfs, which in 6.1 keeps trusted.* and security.* xattrs,
    # not user.* (6.6+).
    r rw_setxattr=$($F try setxattr $V/b trusted.lab labvalue) rw_getxattr=$($F getxattr $V/b trusted.lab)
    ln -s b $V/sym && r rw_symlink=$(readlink $V/sym) || r rw_symlink=failed
    ln $V/b $V/hard && r rw_hardlink=$(stat -c %h $V/b) || r rw_hardlink=failed
    r rw_guest_stat=$(stat -c '%u:%g_%a' $V/b)
fi
if has escape; then
    echo GUEST-NS > /lab-secret
    look() { c=$(cat "$1" 2>/dev/null); case "$c" in *HOST-SECRET*) echo leaked;; GUEST-NS) echo guest;; "") echo none;; *) echo other;; esac; }
    r esc_dotdot=$(look /mnt/etc/../../../lab-secret) esc_rootlink=$(look /mnt/etc/rootlink/lab-secret) \
      esc_uplink=$(look /mnt/etc/uplink) esc_abslink=$(look /mnt/etc/abslink)
    r esc_hardlink_out=$($F try link /lab-secret /mnt/etc/hl) esc_symlink_out=$($F try symlink /lab-secret /mnt/etc/gsym)
    r esc_gsym=$(look /mnt/etc/gsym)
    grep -rl HOST-SECRET /mnt/etc /mnt/var >/dev/null 2>&1 && r esc_grep=leaked || r esc_grep=none
    r esc_mknod_chr=$($F try mknod-chr /mnt/var/null0) esc_mkfifo=$($F try mkfifo /mnt/var/fifo0)
fi
if has big; then
    t0=$(now); r big_find=$(find /mnt/big | wc -l) big_find_s=$(secs $t0)
fi
if has kill; then
    r kill_fsync=$($F fsync /mnt/var/killed payload-before-kill)
    r synced=1
    sleep 600
fi
for t in $(arg lab.tags | tr , ' '); do umount $(mnt $t) || r umount_$t=failed; done
r done=1
"#;

/// The kernel command line of a run.
pub fn guest_cmdline(run: &str, tags: &[&str], checks: &str) -> String {
    format!(
        "console=ttyS0 reboot=k panic=1 pci=off quiet lab.run={run} lab.tags={} lab.fs={checks}",
        tags.join(",")
    )
}

/// A tinyvmm config for a run; `shares` is the JSON list.
pub fn tinyvmm_config(run: &str, shares: &str, tags: &[&str], checks: &str) -> String {
    format!(
        r#"{{"name":"{run}","vcpus":1,"memory_mib":256,"rng":false,
"kernel":{{"path":"/lab/l2/vmlinuz","initrd":"/lab/l2/initrd.gz","cmdline":"{}"}},
"serial":"stdout","shares":{shares}}}"#,
        guest_cmdline(run, tags, checks)
    )
}

/// The shares JSON for tinyvmm's embedded server.
pub fn embedded_shares(shares: &[Share]) -> String {
    let v: Vec<String> = shares
        .iter()
        .map(|s| {
            format!(
                r#"{{"tag":"{}","source":"{}","read_only":{}}}"#,
                s.tag, s.source, s.read_only
            )
        })
        .collect();
    format!("[{}]", v.join(","))
}

/// The shares JSON for external backends listening on `/run/vfs-<run>-<tag>.sock`.
pub fn socket_shares(run: &str, shares: &[Share]) -> String {
    let v: Vec<String> = shares
        .iter()
        .map(|s| {
            format!(
                r#"{{"tag":"{}","socket":"{}"}}"#,
                s.tag,
                socket_path(run, s.tag)
            )
        })
        .collect();
    format!("[{}]", v.join(","))
}

/// Where an external backend of a run listens.
pub fn socket_path(run: &str, tag: &str) -> String {
    format!("/run/vfs-{run}-{tag}.sock")
}

/// Upstream virtiofsd, installed by `.ci/run` next to the lab cache
/// (`<lab>/../virtiofsd/bin/virtiofsd`); panics naming the path when it is missing. Leaked
/// so it fits [`Daemon::Upstream`].
pub fn upstream_virtiofsd() -> &'static str {
    let dirs = crate::paths::LabDirs::discover().unwrap_or_else(|e| panic!("{e}"));
    let path = dirs.lab.join("../virtiofsd/bin/virtiofsd");
    let path = path
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e} (install it: see .ci/run)", path.display()));
    Box::leak(path.to_string_lossy().into_owned().into_boxed_str())
}

/// An external vhost-user-fs backend, as a shell command for one share. All run with the
/// chroot sandbox: L1's root is the initramfs (rootfs), where `pivot_root(2)` fails with
/// EINVAL, so the namespace sandboxes cannot start there. `tinyvmm virtiofsd` runs without a
/// sandbox: its chroot mode fails at start (the server opens /proc/self/fd after the chroot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `tinyvmm virtiofsd` (upstream-compatible flags).
    Tinyvmm,
    /// Upstream (Rust) virtiofsd at this path.
    Upstream(&'static str),
    /// QEMU's C virtiofsd (`/usr/lib/qemu/virtiofsd`; no read-only mode).
    QemuC,
}

impl Daemon {
    fn command(self, run: &str, s: &Share) -> String {
        let sock = socket_path(run, s.tag);
        let ro = if s.read_only { " --readonly" } else { "" };
        match self {
            Daemon::Tinyvmm => format!(
                "tinyvmm virtiofsd --socket-path {sock} --shared-dir {}{ro} --tag {} --sandbox none",
                s.source, s.tag
            ),
            Daemon::Upstream(path) => format!(
                "{path} --socket-path {sock} --shared-dir {}{ro} --xattr --cache auto --sandbox chroot \
                 --rlimit-nofile 1024",
                s.source
            ),
            Daemon::QemuC => format!(
                "/usr/lib/qemu/virtiofsd --socket-path={sock} -o source={} -o xattr -o cache=auto -o sandbox=chroot",
                s.source
            ),
        }
    }
}

/// A virtio-fs lab scenario: the guest side is [`GUEST_SCRIPT`], L1 gets `script` and the
/// `fsprobe` helper; one emulator retry, hard timeout `timeout`.
pub fn scenario(name: &str, script: &str, timeout: std::time::Duration) -> crate::Scenario {
    let fsprobe = build_fsprobe().unwrap_or_else(|e| panic!("{e}"));
    crate::Scenario::new(name)
        .l2_script(GUEST_SCRIPT)
        .script(script)
        .executable(FSPROBE_L1, fsprobe)
        .timeout(timeout)
        .emulation_retries(1)
}

/// QEMU (q35) with one vhost-user-fs-pci device per share (memfd guest memory, shared).
/// Not microvm: QEMU 10's microvm with ACPI (which Debian's kernel needs to find its
/// virtio-mmio devices) never reaches the guest kernel under L1's KVM — no output at all,
/// with either SeaBIOS build, with or without ioapic2/pcie/pit/rtc — while q35 and microvm
/// with `acpi=off` boot at once. virtio-pci is the transport QEMU users share with most.
pub fn qemu_command(run: &str, shares: &[Share], checks: &str) -> String {
    let tags: Vec<&str> = shares.iter().map(|s| s.tag).collect();
    let cmdline = guest_cmdline(run, &tags, checks).replace(" pci=off", "");
    let mut cmd = format!(
        "qemu-system-x86_64 -M q35,memory-backend=mem -enable-kvm \
         -cpu host -smp 1 -m 256 -object memory-backend-memfd,id=mem,size=256M,share=on \
         -nodefaults -no-user-config -display none -serial stdio -no-reboot \
         -kernel /lab/l2/vmlinuz -initrd /lab/l2/initrd.gz -append '{cmdline}'"
    );
    for (i, s) in shares.iter().enumerate() {
        cmd.push_str(&format!(
            " -chardev socket,id=fs{i},path={} -device vhost-user-fs-pci,chardev=fs{i},tag={}",
            socket_path(run, s.tag),
            s.tag
        ));
    }
    cmd
}

/// QEMU's firmware files, copied into L1 at the same paths: the ones of this host's QEMU.
/// SeaBIOS is /usr/share/qemu/bios-256k.bin up to QEMU 7.2 (Debian bookworm) and only
/// /usr/share/seabios/bios-256k.bin from QEMU 10 (bookworm-backports), which searches that
/// directory too. Panics (a test-setup failure) if a file has no copy at all.
pub fn qemu_firmware() -> Vec<&'static str> {
    const FILES: &[&[&str]] = &[
        &[
            "/usr/share/qemu/bios-256k.bin",
            "/usr/share/seabios/bios-256k.bin",
        ],
        &["/usr/share/qemu/linuxboot_dma.bin"],
        &["/usr/share/qemu/pvh.bin"],
        &["/usr/share/qemu/kvmvapic.bin"],
    ];
    FILES
        .iter()
        .map(|candidates| {
            candidates
                .iter()
                .copied()
                .find(|p| Path::new(p).is_file())
                .unwrap_or_else(|| panic!("QEMU firmware missing: none of {candidates:?}"))
        })
        .collect()
}

/// The L1 side of one VM run: starts `daemon` for every share under `ulimit -n 1024` (if
/// any), then `vmm` (a shell command, also under `ulimit -n 1024`, with its console in
/// /tmp/<run>.log), waits for it, and prints the console. With `kill` the VMM is SIGKILLed as
/// soon as the guest reports `synced=1`. Upstream virtiofsd raises its own soft fd limit to
/// the hard one unless told otherwise, so it gets `--rlimit-nofile 1024` as well. Reports `<run>.exit`, `<run>.server_hwm_kib` (each
/// backend's peak RSS), `<run>.server_nofile` (the fd
/// limit of every backend process) and `<run>.servers` (how many there were).
pub fn vm_run_script(
    run: &str,
    shares: &[Share],
    daemon: Option<Daemon>,
    vmm: &str,
    kill: bool,
) -> String {
    let mut s = String::from("pids=\n");
    if let Some(d) = daemon {
        for sh in shares {
            let sock = socket_path(run, sh.tag);
            s.push_str(&format!(
                "rm -f {sock}; (ulimit -n 1024; exec timeout 900 {}) >/tmp/{run}-{}.dlog 2>&1 &\npids=\"$pids $!\"\n\
                 i=0; until [ -S {sock} ] || [ $i -ge 300 ]; do sleep 0.1; i=$((i + 1)); done\n",
                d.command(run, sh),
                sh.tag
            ));
        }
    }
    s.push_str(&format!(
        r#"(ulimit -n 1024; exec timeout 900 {vmm}) >/tmp/{run}.log 2>&1 &
vpid=$!
# The console live on L1's, prefixed so its report lines count once (from the `cat` below).
tail -f /tmp/{run}.log 2>/dev/null | while IFS= read -r l; do echo "{run}| $l"; done &
i=0; until grep -q "LAB {run}.mounted=" /tmp/{run}.log || ! kill -0 $vpid 2>/dev/null || [ $i -ge 3000 ]; do sleep 0.1; i=$((i + 1)); done
n=0; lim=
for p in /proc/[0-9]*; do
    c=$(tr '\0' ' ' < $p/cmdline 2>/dev/null)
    case "$c" in timeout*|grep*|"") continue;; *virtiofsd*) ;; *) continue;; esac
    n=$((n + 1)); lim="$lim$(awk '/Max open files/ {{print $4}}' $p/limits),"
    # Its peak RSS (VmHWM), sampled every 0.5 s until it is gone; the last sample stays.
    (while v=$(awk '/VmHWM/ {{print $2}}' $p/status 2>/dev/null) && [ -n "$v" ]; do
        echo "$v" > /tmp/{run}-hwm-$n; sleep 0.5; done) &
done
lab-report {run}.servers=$n {run}.server_nofile=${{lim:-none}}
"#
    ));
    if kill {
        let vmm_cmd = vmm.split(' ').take(2).collect::<Vec<_>>().join(" ");
        s.push_str(&format!(
            r#"i=0; until grep -q "LAB {run}.synced=1" /tmp/{run}.log || [ $i -ge 6000 ]; do usleep 20000; i=$((i + 1)); done
# The VMM is $vpid itself (busybox `timeout` execs the command and watches from a forked
# child) or its child (coreutils `timeout`): the one whose command line is the VMM's.
tp=
for p in /proc/$vpid /proc/[0-9]*; do
    [ "${{p#/proc/}}" = "$vpid" ] || [ "$(cut -d' ' -f4 $p/stat 2>/dev/null)" = "$vpid" ] || continue
    case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in "{vmm_cmd}"*) tp=${{p#/proc/}}; break;; esac
done
lab-report {run}.host_vmm_pid=${{tp:-none}}
kill -9 $tp; lab-report {run}.host_kill=$?
"#
        ));
    }
    s.push_str(&format!(
        r#"wait $vpid
rc=$?
for p in $pids; do kill $p 2>/dev/null; wait $p; done
pkill -f "tail -f /tmp/{run}.log"
cat /tmp/{run}.log
[ $rc = 0 ] || cat /tmp/{run}-*.dlog 2>/dev/null
lab-report {run}.server_hwm_kib=$(cat /tmp/{run}-hwm-* 2>/dev/null | tr '\n' ',')
left=0
for p in /proc/[0-9]*; do
    c=$(tr '\0' ' ' < $p/cmdline 2>/dev/null)
    case "$c" in timeout*|grep*|"") continue;; *virtiofsd*) left=$((left + 1));; esac
done
lab-report {run}.exit=$rc {run}.servers_left=$left
"#
    ));
    if vmm.starts_with("qemu-system") && !kill {
        // QEMU runs with -no-reboot: a guest reset ends it with status 0, like a poweroff.
        s.push_str(&format!(
            r#"if grep -q "l2.status=" /tmp/{run}.log; then lab-report {run}.l2_finished=yes
elif grep -q "Kernel panic\|Oops" /tmp/{run}.log; then lab-report {run}.l2_finished=crashed
else lab-report {run}.l2_finished=reset {l2_reset}={run}; fi
"#,
            l2_reset = crate::lab::L2_SILENT_RESET
        ));
    }
    s
}

/// L1's checks after a run with `rw`, `escape` or `kill`: what the guest did is on L1's disk
/// with the owner and mode it asked for, and nothing outside the shares changed.
pub fn host_check_script(run: &str) -> String {
    format!(
        r#"
V=/var/lib/microvms/vm1/var; E=/var/lib/microvms/vm1/etc
h() {{ lab-report {run}.host_$*; }}
[ -f $V/b ] && h b_stat=$(stat -c '%u:%g_%a_%h' $V/b) && h b_data=$(cat $V/b)
[ -f $V/b ] && h b_xattr=$({FSPROBE_L1} getxattr $V/b trusted.lab)
[ -L $V/sym ] && h sym=$(readlink $V/sym)
[ -f $V/synced ] && h synced=$(cat $V/synced)
[ -f $V/killed ] && h killed=$(cat $V/killed)
[ -e $V/a ] || [ -e $V/gone ] && h leftovers=yes || h leftovers=no
[ -L $E/gsym ] && h gsym=$(readlink $E/gsym)
[ -e $V/null0 ] && h null0=$(stat -c '%F' $V/null0 | tr ' ' _)
h secret=$(cat /lab-secret)
"#
    )
}
