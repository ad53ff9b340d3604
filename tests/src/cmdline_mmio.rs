//! The lab kernel's `virtio_mmio` module rebuilt with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, the
//! option NixOS kernels have and Debian's lack: with it, a guest booted with `acpi=off` finds
//! virtio-mmio devices from `virtio_mmio.device=4K@ADDR:IRQ` arguments, as microvm.nix guests
//! do under Firecracker.
//!
//! The option only changes drivers/virtio/virtio_mmio.c, so that one file is built as an
//! out-of-tree module against the headers of exactly the lab kernel (same Debian source
//! version): `linux-source-<x.y>` gives the file, `linux-headers-<release>`,
//! `linux-headers-<abi>-common` and `linux-kbuild-<x.y>` the build tree; the host's
//! `gcc-<n>` (the compiler Debian built the kernel with) compiles it. All four packages are
//! downloaded and unpacked with dpkg, nothing is installed; the stripped module is cached per
//! kernel package under `<lab>/cmdline-mmio/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debian::{self, run_output, Package};
use crate::paths::create_dir;
use crate::LabError;

/// What the module is compiled with, besides the kernel's own configuration.
pub(crate) const KBUILD: &str =
    "obj-m := virtio_mmio.o\nccflags-y := -DCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=1\n";

/// The Debian packages the build needs for kernel `kernel` (`linux-image-<release>`).
pub fn build_packages(kernel: &Package, release: &str) -> Result<Vec<Package>, LabError> {
    let bad = || LabError::ResolvePackage {
        package: kernel.name.clone(),
        detail: format!("cannot derive the header packages from kernel release {release}"),
    };
    // "6.1.0-57-cloud-amd64" → series "6.1", ABI "6.1.0-57".
    let mut parts = release.splitn(3, '-');
    let (version, abi_no) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let series: Vec<&str> = version.split('.').take(2).collect();
    if series.len() != 2 {
        return Err(bad());
    }
    let series = series.join(".");
    let abi = format!("{version}-{abi_no}");
    Ok([
        format!("linux-source-{series}"),
        format!("linux-headers-{release}"),
        format!("linux-headers-{abi}-common"),
        format!("linux-kbuild-{series}"),
    ]
    .into_iter()
    .map(|name| Package {
        name,
        version: kernel.version.clone(),
    })
    .collect())
}

/// The cached module for `kernel`, built first if needed.
pub fn prepare(
    lab_dir: &Path,
    debs: &Path,
    kernel: &Package,
    release: &str,
) -> Result<PathBuf, LabError> {
    let dir = lab_dir.join("cmdline-mmio").join(kernel.key());
    let module = dir.join("virtio_mmio.ko");
    if module.is_file() {
        return Ok(module);
    }
    log::info!("lab: building virtio_mmio with CMDLINE_DEVICES for {release}");
    let packages = build_packages(kernel, release)?;
    let mut roots = Vec::new();
    for p in &packages {
        roots.push(debian::fetch_unpacked(p, debs)?);
    }
    let build = dir.join("build");
    if build.exists() {
        fs::remove_dir_all(&build).map_err(|source| LabError::WriteFile {
            path: build.clone(),
            source,
        })?;
    }
    create_dir(&build)?;
    extract_source(&roots[0], &packages[0].name, &build)?;
    let tree = headers_tree(&roots[1..], release)?;
    write(&build.join("Kbuild"), KBUILD.as_bytes())?;
    run_output(
        Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(&tree)
            .arg(format!("M={}", build.display()))
            .arg("modules"),
    )?;
    let tmp = dir.join("virtio_mmio.ko.tmp");
    run_output(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&tmp)
            .arg(build.join("virtio_mmio.ko")),
    )?;
    fs::rename(&tmp, &module).map_err(|source| LabError::WriteFile {
        path: module.clone(),
        source,
    })?;
    let _ = fs::remove_dir_all(&build);
    // The source package is 139 MB (twice: .deb and unpacked) and one file of it was needed.
    let _ = fs::remove_dir_all(debs.join(packages[0].key()));
    Ok(module)
}

/// drivers/virtio/virtio_mmio.c from the source package's tarball, into `build`.
fn extract_source(root: &Path, source_package: &str, build: &Path) -> Result<(), LabError> {
    let tarball = root.join(format!("usr/src/{source_package}.tar.xz"));
    let member = format!("{source_package}/drivers/virtio/virtio_mmio.c");
    let c = run_output(Command::new("tar").arg("-xJOf").arg(&tarball).arg(&member))?;
    if c.is_empty() {
        return Err(LabError::PackageContent {
            path: tarball.join(member),
        });
    }
    write(&build.join("virtio_mmio.c"), c.as_bytes())
}

/// The unpacked `linux-headers-<release>` tree, its Makefile pointed at the unpacked common
/// headers (Debian's includes them by absolute /usr/src path), and the kbuild scripts linked
/// where its relative `scripts` symlink expects them.
fn headers_tree(roots: &[PathBuf], release: &str) -> Result<PathBuf, LabError> {
    let [flavour, common, kbuild] = roots else {
        return Err(LabError::PackageContent {
            path: PathBuf::from("linux-headers-*"),
        });
    };
    let tree = flavour.join(format!("usr/src/linux-headers-{release}"));
    let common_makefile = fs::read_dir(common.join("usr/src"))
        .map_err(|source| LabError::ReadFile {
            path: common.join("usr/src"),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path().join("Makefile"))
        .find(|p| p.is_file())
        .ok_or(LabError::PackageContent {
            path: common.join("usr/src/linux-headers-*-common/Makefile"),
        })?;
    write(
        &tree.join("Makefile"),
        format!("include {}\n", common_makefile.display()).as_bytes(),
    )?;
    // Both header trees reach the scripts through ../../lib/linux-kbuild-<x.y>: give each
    // unpacked root that directory.
    let kbuild_lib = fs::read_dir(kbuild.join("usr/lib"))
        .map_err(|source| LabError::ReadFile {
            path: kbuild.join("usr/lib"),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("linux-kbuild-"))
        })
        .ok_or(LabError::PackageContent {
            path: kbuild.join("usr/lib/linux-kbuild-*"),
        })?;
    for root in [flavour, common] {
        let link = root
            .join("usr/lib")
            .join(kbuild_lib.file_name().unwrap_or_default());
        if !link.exists() {
            create_dir(&root.join("usr/lib"))?;
            std::os::unix::fs::symlink(&kbuild_lib, &link).map_err(|source| {
                LabError::WriteFile {
                    path: link.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(tree)
}

fn write(path: &Path, data: &[u8]) -> Result<(), LabError> {
    fs::write(path, data).map_err(|source| LabError::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_packages_when_cloud_release_then_source_headers_common_and_kbuild() {
        let kernel = Package {
            name: "linux-image-6.1.0-57-cloud-amd64".into(),
            version: "6.1.192-3".into(),
        };
        let names: Vec<String> = build_packages(&kernel, "6.1.0-57-cloud-amd64")
            .unwrap()
            .into_iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        assert_eq!(
            names,
            [
                "linux-source-6.1=6.1.192-3",
                "linux-headers-6.1.0-57-cloud-amd64=6.1.192-3",
                "linux-headers-6.1.0-57-common=6.1.192-3",
                "linux-kbuild-6.1=6.1.192-3",
            ]
        );
        assert!(build_packages(&kernel, "garbage").is_err());
    }
}
