//! Debian package handling: resolve the cloud kernel package with apt, download it once with
//! `apt-get download` into `target/lab/debs/<name>_<version>/` and unpack it with `dpkg -x`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths::create_dir;
use crate::LabError;

/// The metapackage whose dependency names the current Debian cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// A concrete Debian package version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Package name, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub name: String,
    /// Version, e.g. `6.1.192-2`.
    pub version: String,
}

impl Package {
    /// A filesystem-safe `name_version` key (epoch colons replaced).
    pub fn key(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

/// Runs a command and returns its stdout, or a `CommandFailed` error with its stderr.
pub(crate) fn run_output(cmd: &mut Command) -> Result<String, LabError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| LabError::SpawnCommand {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::CommandFailed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first `linux-image-*` package `metapackage` depends on, per `apt-cache depends`.
pub fn resolve_kernel_package(metapackage: &str) -> Result<String, LabError> {
    let out =
        run_output(Command::new("apt-cache").args(["depends", metapackage])).map_err(|e| {
            LabError::ResolvePackage {
                package: metapackage.to_string(),
                detail: e.to_string(),
            }
        })?;
    parse_kernel_dependency(&out).ok_or_else(|| LabError::ResolvePackage {
        package: metapackage.to_string(),
        detail: "apt-cache depends names no linux-image-* dependency".to_string(),
    })
}

/// The kernel package and its candidate version, remembered in `cache_file` as long as apt's
/// package lists are unchanged (each `apt-cache` call costs ~0.8 s here). If apt cannot answer
/// (no lists, e.g. a CI image that deleted them) the last answer is used, with a warning, so a
/// cached lab keeps working offline.
pub fn resolve_kernel_cached(metapackage: &str, cache_file: &Path) -> Result<Package, LabError> {
    let stamp = format!("{metapackage} {}", apt_lists_stamp());
    let cached = fs::read_to_string(cache_file)
        .ok()
        .and_then(|t| parse_resolution(&t));
    if let Some((cached_stamp, pkg)) = &cached {
        if *cached_stamp == stamp {
            return Ok(pkg.clone());
        }
    }
    let resolved = resolve_kernel_package(metapackage).and_then(|name| candidate_version(&name));
    let pkg = match (resolved, cached) {
        (Ok(pkg), _) => pkg,
        (Err(e), Some((_, pkg))) => {
            println!(
                "lab: WARNING: {e}; using the last resolved {} {}",
                pkg.name, pkg.version
            );
            return Ok(pkg);
        }
        (Err(e), None) => return Err(e),
    };
    let text = format!("{stamp}\n{}\n{}\n", pkg.name, pkg.version);
    fs::write(cache_file, text).map_err(|source| LabError::WriteFile {
        path: cache_file.to_path_buf(),
        source,
    })?;
    Ok(pkg)
}

/// Parses the resolution cache: stamp, package name, version (one per line).
fn parse_resolution(text: &str) -> Option<(String, Package)> {
    let mut lines = text.lines();
    let stamp = lines.next()?.to_string();
    let name = lines.next()?.to_string();
    let version = lines.next()?.to_string();
    Some((stamp, Package { name, version }))
}

/// A fingerprint of apt's package lists: the newest mtime (ns) and the file count.
fn apt_lists_stamp() -> String {
    let Ok(entries) = fs::read_dir("/var/lib/apt/lists") else {
        return "no-lists".to_string();
    };
    let (mut newest, mut count) = (0u128, 0usize);
    for e in entries.filter_map(Result::ok) {
        let mtime = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        newest = newest.max(mtime);
        count += 1;
    }
    format!("{newest}-{count}")
}

/// Extracts the kernel image dependency from `apt-cache depends` output.
pub fn parse_kernel_dependency(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|line| {
        let dep = line.trim().strip_prefix("Depends:")?.trim();
        dep.starts_with("linux-image-").then(|| dep.to_string())
    })
}

/// The version apt would install for `name` (its candidate), or the installed one for
/// packages that are already on the host.
pub fn candidate_version(name: &str) -> Result<Package, LabError> {
    let out = run_output(Command::new("apt-cache").args(["show", "--no-all-versions", name]))?;
    let version = out
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| LabError::ResolvePackage {
            package: name.to_string(),
            detail: "apt-cache show printed no Version".to_string(),
        })?;
    Ok(Package {
        name: name.to_string(),
        version,
    })
}

/// The version of an installed package, per dpkg.
pub fn installed_version(name: &str) -> Result<Package, LabError> {
    let version = run_output(Command::new("dpkg-query").args(["-W", "-f=${Version}", name]))?;
    Ok(Package {
        name: name.to_string(),
        version: version.trim().to_string(),
    })
}

/// Removes cached packages in `debs_dir` whose name starts with `family` (e.g.
/// `linux-image-`) other than `keep`: old kernels after a Debian update. Best effort.
pub fn prune_other_packages(debs_dir: &Path, family: &str, keep: &Package) {
    let Ok(entries) = fs::read_dir(debs_dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(family) && name != keep.key() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Downloads (once) and unpacks (once) `pkg`; returns the root of the unpacked tree.
/// Cached under `<debs_dir>/<name>_<version>/root`; a `.complete` marker makes the cache safe
/// against interrupted runs.
pub fn fetch_unpacked(pkg: &Package, debs_dir: &Path) -> Result<PathBuf, LabError> {
    let dir = debs_dir.join(pkg.key());
    let root = dir.join("root");
    let marker = dir.join(".complete");
    if marker.exists() && root.is_dir() {
        return Ok(root);
    }
    create_dir(&dir)?;
    let deb = download(pkg, &dir)?;
    let tmp = dir.join("root.tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|source| LabError::WriteFile {
            path: tmp.clone(),
            source,
        })?;
    }
    run_output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    if root.exists() {
        fs::remove_dir_all(&root).map_err(|source| LabError::WriteFile {
            path: root.clone(),
            source,
        })?;
    }
    fs::rename(&tmp, &root).map_err(|source| LabError::WriteFile {
        path: root.clone(),
        source,
    })?;
    fs::write(&marker, pkg.version.as_bytes()).map_err(|source| LabError::WriteFile {
        path: marker.clone(),
        source,
    })?;
    Ok(root)
}

fn download(pkg: &Package, dir: &Path) -> Result<PathBuf, LabError> {
    if let Some(deb) = find_deb(dir)? {
        return Ok(deb);
    }
    log::info!("lab: downloading {} {}", pkg.name, pkg.version);
    // Sandbox::User=root: the target dir is root's, _apt could not write there.
    run_output(
        Command::new("apt-get")
            .current_dir(dir)
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{}={}", pkg.name, pkg.version)),
    )?;
    find_deb(dir)?.ok_or_else(|| LabError::PackageContent {
        path: dir.join(format!("{}.deb", pkg.key())),
    })
}

fn find_deb(dir: &Path) -> Result<Option<PathBuf>, LabError> {
    let entries = fs::read_dir(dir).map_err(|source| LabError::ReadFile {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_kernel_dependency_when_apt_output_then_first_linux_image() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
    }

    #[test]
    fn parse_kernel_dependency_when_no_image_then_none() {
        let out = "linux-image-cloud-amd64\n  Depends: <virtual>\n  Recommends: foo\n";
        assert_eq!(parse_kernel_dependency(out), None);
    }

    #[test]
    fn prune_other_packages_when_old_kernel_cached_then_only_current_kept() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Package {
            name: "linux-image-6.1.0-56-cloud-amd64".into(),
            version: "6.1.192-2".into(),
        };
        for d in [
            keep.key().as_str(),
            "linux-image-6.1.0-55-cloud-amd64_6.1.190-1",
            "other_1",
        ] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        prune_other_packages(dir.path(), "linux-image-", &keep);
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [keep.key(), "other_1".to_string()]);
    }

    #[test]
    fn fetch_unpacked_when_cached_then_no_download() {
        let dir = tempfile::tempdir().unwrap();
        // A version apt cannot know: any attempt to download would fail the test.
        let pkg = Package {
            name: "no-such-package-lab".into(),
            version: "0.0-test".into(),
        };
        let cached = dir.path().join(pkg.key());
        fs::create_dir_all(cached.join("root/boot")).unwrap();
        fs::write(cached.join(".complete"), "0.0-test").unwrap();
        assert_eq!(
            fetch_unpacked(&pkg, dir.path()).unwrap(),
            cached.join("root")
        );
    }

    #[test]
    fn resolve_kernel_cached_when_apt_cannot_answer_then_last_answer_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("kernel-package.txt");
        fs::write(&cache, "stale-stamp\nlinux-image-test\n1.0-1\n").unwrap();
        let pkg = resolve_kernel_cached("no-such-metapackage-lab", &cache).unwrap();
        assert_eq!(
            pkg,
            Package {
                name: "linux-image-test".into(),
                version: "1.0-1".into()
            }
        );
    }

    #[test]
    fn resolve_kernel_cached_when_apt_cannot_answer_and_no_cache_then_hints_apt_get_update() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_kernel_cached("no-such-metapackage-lab", &dir.path().join("none.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-metapackage-lab") && err.contains("apt-get update"),
            "{err}"
        );
    }

    #[test]
    fn package_key_when_epoch_then_no_colon() {
        let p = Package {
            name: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
        };
        assert_eq!(p.key(), "busybox-static_1%3a1.35.0-4");
    }
}
