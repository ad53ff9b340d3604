//! The cached base images: L1 kernel + base initramfs, L2 kernel + base initramfs.
//!
//! Built from Debian packages only (the kernel behind `linux-image-cloud-amd64`, the host's
//! busybox-static) and cached in `target/lab/images/<key>/`, where the key hashes the package
//! versions and the lab's own init scripts. Scenario-specific files are appended per run as a
//! second cpio archive (see `run_image`), so a run never rebuilds these.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmdline_mmio;
use crate::cpio::CpioWriter;
use crate::debian::{self, run_output, Package};
use crate::paths::{create_dir, LabDirs};
use crate::LabError;

const L1_INIT: &str = include_str!("../assets/l1-init.sh");
const L2_INIT: &str = include_str!("../assets/l2-init.sh");
const L1_REPORT: &str = include_str!("../assets/lab-report-l1.sh");
const L2_REPORT: &str = include_str!("../assets/lab-report-l2.sh");
/// Bump when the layout of the images changes in a way the inputs do not capture.
const FORMAT: &str = "lab-images-v1";

/// Module trees (relative to lib/modules/<version>/) copied into L1; depmod runs over them.
pub const L1_MODULE_DIRS: &[&str] = &[
    "kernel/arch",
    "kernel/virt",
    "kernel/lib",
    "kernel/crypto",
    "kernel/net",
    "kernel/drivers/net",
    "kernel/drivers/virtio",
    "kernel/drivers/block",
    "kernel/drivers/char/hw_random",
    "kernel/fs/fuse",
    "kernel/fs/overlayfs",
];

/// Subtrees of [`L1_MODULE_DIRS`] left out: protocols and hardware drivers the lab never uses
/// (every MiB of initramfs costs L1 boot time under TCG).
pub const L1_MODULE_EXCLUDES: &[&str] = &[
    "kernel/net/sunrpc",
    "kernel/net/ceph",
    "kernel/net/sctp",
    "kernel/net/tipc",
    "kernel/net/smc",
    "kernel/net/rds",
    "kernel/net/dccp",
    "kernel/net/l2tp",
    "kernel/net/mpls",
    "kernel/net/vmw_vsock",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/net/wwan",
    "kernel/drivers/net/hyperv",
    "kernel/drivers/net/xen-netback",
    "kernel/arch/x86/kvm/kvm-intel.ko",
];

/// Modules the L2 init loads, in dependency order; `(name, required)`. rng-core is built in
/// on the current Debian kernel, so it is optional.
pub const L2_MODULES: &[(&str, bool)] = &[
    ("virtio_ring", true),
    ("virtio", true),
    ("virtio_mmio", true),
    // virtio-pci, for the guests QEMU (q35) runs in the virtio-fs interop test.
    ("virtio_pci_legacy_dev", false),
    ("virtio_pci_modern_dev", false),
    ("virtio_pci", false),
    ("failover", true),
    ("net_failover", true),
    ("virtio_net", true),
    ("virtio_blk", true),
    // Read-only store images on virtio-blk (squashfs has no module dependencies).
    ("squashfs", false),
    ("fuse", true),
    ("virtiofs", true),
    ("rng-core", false),
    ("virtio-rng", false),
    // The ACPI power button (PNP0C0C) and evdev, so a guest can see a power-button press.
    ("button", false),
    ("evdev", false),
    // Reports a kernel panic to the VMM through the pvpanic port (ACPI QEMU0001).
    ("pvpanic", false),
    ("pvpanic-mmio", false),
];

/// Where the L2 image holds `virtio_mmio` built with CMDLINE_DEVICES ([`crate::cmdline_mmio`]).
pub const L2_CMDLINE_MMIO_MODULE: &str = "lib/modules/virtio_mmio-cmdline.ko";

/// Kernel command line of L1. `cryptomgr.notests` skips the crypto self-tests, which take
/// half of L1's boot under TCG (0.9 of 1.8 virtual seconds).
pub const L1_CMDLINE: &str = "console=ttyS0 panic=-1 quiet cryptomgr.notests=1";
/// Suggested kernel command line for the L2 guest (also in /lab/vm.json).
pub const L2_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet";

/// Paths of the cached base images.
#[derive(Debug, Clone)]
pub struct BaseImages {
    /// The Debian kernel package the images come from.
    pub kernel_package: Package,
    /// `uname -r` of that kernel.
    pub kernel_release: String,
    /// The kernel (used for both L1 and L2).
    pub vmlinuz: PathBuf,
    /// Uncompressed cpio: L1 without scenario files, release binaries or L2 initrd.
    pub l1_base: PathBuf,
    /// Gzipped cpio: L2 without scenario script.
    pub l2_base: PathBuf,
}

/// Resolves packages, then returns the cached images or builds them.
pub fn prepare(dirs: &LabDirs) -> Result<BaseImages, LabError> {
    create_dir(&dirs.lab)?;
    let kernel_package = debian::resolve_kernel_cached(
        debian::KERNEL_METAPACKAGE,
        &dirs.lab.join("kernel-package.txt"),
    )?;
    let busybox = debian::installed_version("busybox-static")?;
    let debs = dirs.lab.join("debs");
    let root = debian::fetch_unpacked(&kernel_package, &debs)?;
    debian::prune_other_packages(&debs, "linux-image-", &kernel_package);
    let kernel_release = kernel_release(&root)?;
    let cmdline_mmio = cmdline_mmio::prepare(&dirs.lab, &debs, &kernel_package, &kernel_release)?;
    let key = format!(
        "{}-{:016x}",
        kernel_package.key(),
        fnv1a(&[
            FORMAT,
            &busybox.key(),
            L1_INIT,
            L2_INIT,
            L1_REPORT,
            L2_REPORT,
            &L1_MODULE_DIRS.join(","),
            &L1_MODULE_EXCLUDES.join(","),
            &l2_module_names(),
            cmdline_mmio::KBUILD,
        ])
    );
    let dir = dirs.lab.join("images").join(key);
    let images = BaseImages {
        vmlinuz: dir.join("vmlinuz"),
        l1_base: dir.join("l1-base.cpio"),
        l2_base: dir.join("l2-base.cpio.gz"),
        kernel_package,
        kernel_release,
    };
    if dir.join(".complete").exists() {
        return Ok(images);
    }
    log::info!("lab: building base images in {}", dir.display());
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|source| LabError::WriteFile {
            path: dir.clone(),
            source,
        })?;
    }
    create_dir(&dir)?;
    build(&root, &dir, &images, &cmdline_mmio)?;
    let marker = dir.join(".complete");
    fs::write(&marker, b"").map_err(|source| LabError::WriteFile {
        path: marker,
        source,
    })?;
    prune_other_images(&dir);
    Ok(images)
}

/// Removes image sets of older inputs (~60 MB each) unless recently used; best effort.
fn prune_other_images(current: &Path) {
    let Some(parent) = current.parent() else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if e.path() != current && e.path().is_dir() && !recently_used(&e.path()) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Image sets touched in the last hour may belong to another checkout or test binary that is
/// running right now (e.g. during development with two versions of this crate): keep them.
fn recently_used(dir: &Path) -> bool {
    let modified = dir.metadata().and_then(|m| m.modified());
    modified
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < std::time::Duration::from_secs(3600))
}

fn build(
    root: &Path,
    dir: &Path,
    images: &BaseImages,
    cmdline_mmio: &Path,
) -> Result<(), LabError> {
    let release = &images.kernel_release;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    copy(&vmlinuz, &images.vmlinuz)?;
    let modroot = dir.join("modroot");
    stage_l1_modules(
        &root.join("lib/modules").join(release),
        &modroot.join("lib/modules").join(release),
    )?;
    run_output(Command::new("depmod").arg("-b").arg(&modroot).arg(release))?;
    let busybox = busybox_applets()?;
    write_cpio(&images.l1_base, |w| {
        common_root(w, &busybox.0, &busybox.1, L1_INIT)?;
        w.file("lab/bin/lab-report", 0o755, L1_REPORT.as_bytes())?;
        w.host_tree(
            &format!("lib/modules/{release}"),
            &modroot.join("lib/modules").join(release),
        )?;
        w.host_file("lab/l2/vmlinuz", &images.vmlinuz)?;
        w.file(
            "lab/vm.json",
            0o644,
            l2_vm_config_json("l2", 1, 256).as_bytes(),
        )
    })?;
    let mod_src = root.join("lib/modules").join(release).join("kernel");
    let l2_modules = find_l2_modules(&mod_src)?;
    write_cpio(&images.l2_base, |w| {
        common_root(w, &busybox.0, &busybox.1, L2_INIT)?;
        w.char_device("dev/mem", 0o600, 1, 1)?;
        w.file("bin/lab-report", 0o755, L2_REPORT.as_bytes())?;
        let mut order = String::new();
        for (name, path) in &l2_modules {
            w.host_file(&format!("lib/modules/{name}.ko"), path)?;
            order.push_str(name);
            order.push('\n');
        }
        // Loaded instead of virtio_mmio when the kernel command line has virtio_mmio.device=.
        w.host_file(L2_CMDLINE_MMIO_MODULE, cmdline_mmio)?;
        w.file("lib/modules/order", 0o644, order.as_bytes())
    })?;
    let l2_raw = images.l2_base.with_extension("");
    fs::rename(&images.l2_base, &l2_raw).map_err(|source| LabError::WriteFile {
        path: l2_raw.clone(),
        source,
    })?;
    run_output(Command::new("gzip").args(["-n", "-9"]).arg(&l2_raw))?;
    fs::remove_dir_all(&modroot).map_err(|source| LabError::WriteFile {
        path: modroot,
        source,
    })
}

/// The suggested tinyvmm config for booting the L2 guest inside L1 (schema: CONTEXT.md).
pub fn l2_vm_config_json(name: &str, vcpus: u32, memory_mib: u32) -> String {
    format!(
        concat!(
            "{{\n  \"name\": \"{}\",\n  \"vcpus\": {},\n  \"memory_mib\": {},\n",
            "  \"kernel\": {{\n    \"path\": \"/lab/l2/vmlinuz\",\n",
            "    \"initrd\": \"/lab/l2/initrd.gz\",\n    \"cmdline\": \"{}\"\n  }},\n",
            "  \"serial\": \"stdout\"\n}}\n"
        ),
        name, vcpus, memory_mib, L2_CMDLINE
    )
}

/// Directories, device nodes, /init and busybox with its applet links.
fn common_root<W: std::io::Write>(
    w: &mut CpioWriter<W>,
    busybox: &Path,
    applets: &[String],
    init: &str,
) -> std::io::Result<()> {
    for d in [
        "proc", "sys", "dev", "tmp", "run", "root", "etc", "usr/bin", "usr/sbin", "sbin",
    ] {
        w.dir(d, 0o755)?;
    }
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.char_device("dev/null", 0o666, 1, 3)?;
    w.host_file("bin/busybox", busybox)?;
    for applet in applets.iter().filter(|a| a.as_str() != "bin/busybox") {
        w.symlink(applet, "/bin/busybox")?;
    }
    w.file("init", 0o755, init.as_bytes())
}

fn write_cpio(
    path: &Path,
    fill: impl FnOnce(&mut CpioWriter<BufWriter<File>>) -> std::io::Result<()>,
) -> Result<(), LabError> {
    let err = |source| LabError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(err)?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    fill(&mut w).map_err(err)?;
    w.finish().map_err(err)?;
    Ok(())
}

/// The host's static busybox and its applet paths (`busybox --list-full`).
fn busybox_applets() -> Result<(PathBuf, Vec<String>), LabError> {
    let path =
        crate::prereq::find_in_path(&std::env::var_os("PATH").unwrap_or_default(), "busybox")
            .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    let list = run_output(Command::new(&path).arg("--list-full"))?;
    Ok((
        path,
        list.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect(),
    ))
}

fn kernel_release(root: &Path) -> Result<String, LabError> {
    let modules = root.join("lib/modules");
    let entries = fs::read_dir(&modules).map_err(|source| LabError::ReadFile {
        path: modules.clone(),
        source,
    })?;
    entries
        .filter_map(Result::ok)
        .find(|e| e.path().join("kernel").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .ok_or(LabError::PackageContent {
            path: modules.join("<version>/kernel"),
        })
}

fn stage_l1_modules(src: &Path, dest: &Path) -> Result<(), LabError> {
    for sub in L1_MODULE_DIRS {
        let from = src.join(sub);
        if from.is_dir() {
            link_tree(&from, &dest.join(sub), src)?;
        }
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if src.join(f).exists() {
            copy(&src.join(f), &dest.join(f))?;
        }
    }
    Ok(())
}

/// Mirrors a tree with hard links (copies when linking is impossible), skipping
/// [`L1_MODULE_EXCLUDES`], which are relative to `modules_dir` (lib/modules/<version>).
fn link_tree(from: &Path, to: &Path, modules_dir: &Path) -> Result<(), LabError> {
    if is_excluded(from, modules_dir) {
        return Ok(());
    }
    create_dir(to)?;
    let entries = fs::read_dir(from).map_err(|source| LabError::ReadFile {
        path: from.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| LabError::ReadFile {
            path: from.to_path_buf(),
            source,
        })?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if is_excluded(&src, modules_dir) {
            continue;
        }
        if src.is_dir() {
            link_tree(&src, &dst, modules_dir)?;
        } else if fs::hard_link(&src, &dst).is_err() {
            copy(&src, &dst)?;
        }
    }
    Ok(())
}

fn is_excluded(path: &Path, modules_dir: &Path) -> bool {
    path.strip_prefix(modules_dir)
        .map(|rel| L1_MODULE_EXCLUDES.iter().any(|ex| rel == Path::new(ex)))
        .unwrap_or(false)
}

fn find_l2_modules(kernel_dir: &Path) -> Result<Vec<(&'static str, PathBuf)>, LabError> {
    let mut found = Vec::new();
    for (name, required) in L2_MODULES {
        match find_file(kernel_dir, &format!("{name}.ko")) {
            Some(path) => found.push((*name, path)),
            None if *required => {
                return Err(LabError::PackageContent {
                    path: kernel_dir.join(format!("**/{name}.ko")),
                })
            }
            None => {}
        }
    }
    Ok(found)
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(dir).ok()?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    entries.iter().find_map(|e| {
        let path = e.path();
        if path.is_dir() {
            find_file(&path, name)
        } else {
            (e.file_name() == name).then_some(path)
        }
    })
}

fn copy(from: &Path, to: &Path) -> Result<(), LabError> {
    if let Some(parent) = to.parent() {
        create_dir(parent)?;
    }
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| LabError::ReadFile {
            path: from.to_path_buf(),
            source,
        })
}

/// The L2 module list as part of the image key: changing it must rebuild the image.
fn l2_module_names() -> String {
    let names: Vec<&str> = L2_MODULES.iter().map(|(name, _)| *name).collect();
    names.join(",")
}

/// FNV-1a over the parts (with separators): a cache key stable across Rust versions.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_when_parts_differ_in_boundaries_then_keys_differ() {
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
        assert_eq!(fnv1a(&["x"]), fnv1a(&["x"]));
    }

    #[test]
    fn l2_vm_config_json_when_rendered_then_points_at_lab_paths() {
        let json = l2_vm_config_json("l2", 1, 256);
        assert!(json.contains("\"path\": \"/lab/l2/vmlinuz\""), "{json}");
        assert!(json.contains("\"initrd\": \"/lab/l2/initrd.gz\""), "{json}");
        assert!(json.contains("\"memory_mib\": 256"), "{json}");
    }

    #[test]
    fn is_excluded_when_path_under_excluded_tree_root_then_true() {
        let m = Path::new("/x/lib/modules/6.1");
        assert!(is_excluded(&m.join("kernel/net/sunrpc"), m));
        assert!(!is_excluded(&m.join("kernel/net/bridge"), m));
        assert!(!is_excluded(Path::new("/elsewhere/kernel/net/sunrpc"), m));
    }

    #[test]
    fn find_l2_modules_when_required_missing_then_error_names_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("drivers/virtio")).unwrap();
        fs::write(dir.path().join("drivers/virtio/virtio_ring.ko"), b"").unwrap();
        let err = find_l2_modules(dir.path()).unwrap_err().to_string();
        assert!(err.contains("virtio.ko"), "{err}");
    }
}
