//! The cached Debian root for the virtio-fs root scenario (issue 9, "a real root").
//!
//! Built from Debian packages with `mmdebstrap` (bookworm, variant `minbase` plus Debian's own
//! init, `sysvinit-core`) and cached in `<lab>/roots/<key>/`, where the key hashes the suite,
//! variant, package list, the Debian-side runner script and mmdebstrap's version: the root is
//! rebuilt only when one of them changes, and roots of older inputs are pruned.
//!
//! The tree reaches L1 as an ext4 image (`mkfs.ext4 -d`, no mount needed) that the runner
//! attaches as a second drive, not inside L1's initramfs: a ~100 MB tree in the initramfs
//! would be unpacked by L1's kernel at every boot under TCG.
//!
//! sysvinit instead of systemd: it is Debian's init too, and it boots in a fraction of the
//! time under nested TCG (no unit graph, no udev needed for a virtio-fs root).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debian::{self, run_output};
use crate::image::fnv1a;
use crate::paths::create_dir;
use crate::LabError;

/// The Debian runner installed as /etc/rc.local of the root.
pub const ROOT_SUITE_SCRIPT: &str = include_str!("../assets/root-suite.sh");
/// Bump when the layout of the root changes in a way the inputs do not capture.
const FORMAT: &str = "lab-root-v1";
/// The Debian release of the root (its glibc equals the host's Debian 12 glibc, so host-built
/// dynamic binaries run in it).
pub const ROOT_SUITE: &str = "bookworm";
/// mmdebstrap's variant: essential + apt + required-priority basics, no init.
pub const ROOT_VARIANT: &str = "minbase";
/// Packages added to the variant: Debian's init and what the runner needs.
pub const ROOT_PACKAGES: &[&str] = &["sysvinit-core", "kmod", "procps"];
/// Where mmdebstrap fetches from.
pub const ROOT_MIRROR: &str = "http://deb.debian.org/debian";
/// Size of the ext4 image in MiB (the tree is ~100 MB; the rest is headroom for the suites).
pub const ROOT_IMAGE_MIB: u32 = 512;

/// Paths of a cached Debian root.
#[derive(Debug, Clone)]
pub struct DebianRoot {
    /// The unpacked tree (host side).
    pub tree: PathBuf,
    /// The same tree as an ext4 image, for L1's second drive.
    pub image: PathBuf,
}

/// Returns the cached root, building it first when its inputs changed.
pub fn prepare(lab_dir: &Path) -> Result<DebianRoot, LabError> {
    let mmdebstrap = debian::installed_version("mmdebstrap")?;
    let dir = lab_dir
        .join("roots")
        .join(format!("{ROOT_SUITE}-{:016x}", root_key(&mmdebstrap.key())));
    let root = DebianRoot {
        tree: dir.join("tree"),
        image: dir.join("root.ext4"),
    };
    if dir.join(".complete").exists() {
        return Ok(root);
    }
    log::info!("lab: building the Debian root in {}", dir.display());
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|source| LabError::WriteFile {
            path: dir.clone(),
            source,
        })?;
    }
    create_dir(&dir)?;
    build(&root)?;
    let marker = dir.join(".complete");
    fs::write(&marker, b"").map_err(|source| LabError::WriteFile {
        path: marker,
        source,
    })?;
    prune_other_roots(&dir);
    Ok(root)
}

/// The cache key over every input of the root.
fn root_key(mmdebstrap_version: &str) -> u64 {
    fnv1a(&[
        FORMAT,
        ROOT_SUITE,
        ROOT_VARIANT,
        &ROOT_PACKAGES.join(","),
        ROOT_MIRROR,
        ROOT_SUITE_SCRIPT,
        &ROOT_IMAGE_MIB.to_string(),
        mmdebstrap_version,
    ])
}

/// The mmdebstrap command line building `tree`.
fn mmdebstrap_command(tree: &Path, rc_local: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("1800")
        .arg("mmdebstrap")
        .arg(format!("--variant={ROOT_VARIANT}"))
        .arg(format!("--include={}", ROOT_PACKAGES.join(",")))
        // Documentation is dead weight in the image.
        .arg("--dpkgopt=path-exclude=/usr/share/{doc,man,locale,info}/*")
        .arg(format!(
            "--customize-hook=install -m 0755 {} \"$1/etc/rc.local\"",
            rc_local.display()
        ))
        // A virtio-fs root has no block device to fsck or remount; no getty on ttyS0 either
        // (the runner powers off).
        .arg("--customize-hook=printf 'root / virtiofs defaults 0 0\\n' > \"$1/etc/fstab\"")
        .arg("--customize-hook=echo lab-root > \"$1/etc/hostname\"")
        .arg(ROOT_SUITE)
        .arg(tree)
        .arg(ROOT_MIRROR);
    cmd
}

fn build(root: &DebianRoot) -> Result<(), LabError> {
    let dir = root.tree.parent().unwrap_or(Path::new("."));
    let rc_local = dir.join("rc.local");
    fs::write(&rc_local, ROOT_SUITE_SCRIPT).map_err(|source| LabError::WriteFile {
        path: rc_local.clone(),
        source,
    })?;
    run_output(&mut mmdebstrap_command(&root.tree, &rc_local))?;
    run_output(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "lab-root", "-E", "root_owner=0:0", "-d"])
            .arg(&root.tree)
            .arg(&root.image)
            .arg(format!("{ROOT_IMAGE_MIB}M")),
    )?;
    Ok(())
}

/// The fsx crate (File System eXerciser) the root scenario runs on its rw share.
pub const FSX_CRATE: (&str, &str) = ("fsx", "0.3.2");

/// `<lab>/tools/fsx-<version>/bin/fsx`, built once with `cargo install --locked` (the Debian
/// root's glibc is the host's, so the host-built dynamic binary runs in it).
pub fn prepare_fsx(lab_dir: &Path) -> Result<PathBuf, LabError> {
    let (name, version) = FSX_CRATE;
    let root = lab_dir.join("tools").join(format!("{name}-{version}"));
    let bin = root.join("bin").join(name);
    if bin.exists() {
        return Ok(bin);
    }
    create_dir(&root)?;
    run_output(
        Command::new("timeout")
            .args([
                "1800",
                "cargo",
                "install",
                "--locked",
                name,
                "--version",
                version,
            ])
            .arg("--root")
            .arg(&root),
    )?;
    Ok(bin)
}

/// Removes roots of older inputs unless used in the last hour; best effort.
fn prune_other_roots(current: &Path) {
    let Some(parent) = current.parent() else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        let recent = path
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < std::time::Duration::from_secs(3600));
        if path != current && path.is_dir() && !recent {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_key_when_mmdebstrap_version_changes_then_key_changes() {
        assert_ne!(
            root_key("mmdebstrap_1.3.5-7"),
            root_key("mmdebstrap_1.4.0-1")
        );
        assert_eq!(root_key("x"), root_key("x"));
    }

    #[test]
    fn mmdebstrap_command_when_built_then_includes_debian_init_and_runner() {
        let cmd = mmdebstrap_command(Path::new("/r/tree"), Path::new("/r/rc.local"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--variant=minbase".to_string()), "{args:?}");
        assert!(
            args.iter()
                .any(|a| a.starts_with("--include=") && a.contains("sysvinit-core")),
            "{args:?}"
        );
        assert!(args.iter().any(|a| a.contains("/r/rc.local")), "{args:?}");
        assert_eq!(args.last().map(String::as_str), Some(ROOT_MIRROR));
    }
}
