//! [`Lab`]: prepares the cached images once, then runs scenarios one at a time (flock).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::error::tail_lines;
use crate::image::{self, BaseImages, L1_CMDLINE};
use crate::paths::{create_dir, LabDirs, LabLock};
use crate::prereq::{self, SystemProbe, REQUIREMENTS};
use crate::runner::{self, Machine, Mode};
use crate::scenario::{LabOutcome, Scenario};
use crate::LabError;

/// Release binaries every lab run needs (built by `cargo build --release --workspace`).
pub const REQUIRED_BINARIES: &[&str] = &["tinyvmm", "kvm-smoke"];
/// L1's RAM: room for 4 nested VMs.
pub const L1_MEMORY_MIB: u32 = 3072;
/// L1's vCPUs in fast mode unless a scenario asks otherwise ([`Scenario::l1_cpus`]): 4, so
/// the lab's busiest scenario (four 1-vCPU guests) never has more guest vCPUs than L1 has
/// CPUs; with 2, L1's kernel crashed in 3 of 4 demo runs (README "Lab reliability").
pub const L1_CPUS: u32 = 4;
/// RAM when booting the L2 image directly (no nesting).
const L2_DIRECT_MEMORY_MIB: u32 = 512;
/// vCPUs when booting the L2 image directly: no nested guests, so L1's default does not apply.
const L2_DIRECT_CPUS: u32 = 2;

/// The nested KVM lab. Cheap to create once images are cached; runs are serialized across
/// threads and processes by an flock on `target/lab/lab.lock`.
#[derive(Debug)]
pub struct Lab {
    mode: Mode,
    dirs: LabDirs,
    images: BaseImages,
}

impl Lab {
    /// Checks host prerequisites and release binaries, then builds (or reuses) the images.
    pub fn new(mode: Mode) -> Result<Self, LabError> {
        prereq::check(&SystemProbe::new(), REQUIREMENTS)?;
        let dirs = LabDirs::discover()?;
        check_release_binaries(&dirs.release, REQUIRED_BINARIES)?;
        warn_if_stale(&dirs);
        let _lock = LabLock::acquire(&dirs.lab)?;
        let images = image::prepare(&dirs)?;
        Ok(Self { mode, dirs, images })
    }

    /// The mode this lab runs QEMU in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The cached images (kernel, base initramfs archives) and the kernel package they use.
    pub fn images(&self) -> &BaseImages {
        &self.images
    }

    /// Boots L1, runs the scenario in it, powers off. A scenario that exits non-zero is still
    /// `Ok` (see [`LabOutcome::ensure_success`]); a hang is `Err(Timeout)` after QEMU is killed.
    pub fn run(&self, scenario: &Scenario) -> Result<LabOutcome, LabError> {
        scenario.validate()?;
        let _lock = LabLock::acquire(&self.dirs.lab)?;
        self.touch_images();
        let run_dir = self.dirs.lab.join("run");
        create_dir(&run_dir)?;
        let l2_initrd = self.l2_initrd(scenario, &run_dir)?;
        let initrd = run_dir.join("l1-initrd.cpio");
        self.l1_initrd(scenario, &l2_initrd, &initrd)?;
        let machine = Machine {
            kernel: &self.images.vmlinuz,
            initrd: &initrd,
            append: L1_CMDLINE,
            memory_mib: L1_MEMORY_MIB,
            cpus: scenario.l1_cpus,
        };
        let mut attempt = 0;
        loop {
            let result = runner::run(&scenario.name, self.mode, &machine, scenario.timeout)
                .and_then(|raw| outcome(scenario, raw, "status"));
            let Some(why) = emulation_failure(&result) else {
                return result;
            };
            if attempt >= scenario.emulation_retries {
                return result;
            }
            attempt += 1;
            let line = format!(
                "scenario `{}`: the emulated machine failed ({why}); retry {attempt} of {}",
                scenario.name, scenario.emulation_retries
            );
            eprintln!("lab: WARNING: {line}");
            record_retry(&line);
        }
    }

    /// Boots the L2 guest image directly under QEMU (no L1, no tinyvmm) and runs the
    /// scenario's L2 script: checks the L2 image itself. Status comes from `l2.status`.
    pub fn run_l2_direct(&self, scenario: &Scenario) -> Result<LabOutcome, LabError> {
        scenario.validate()?;
        let _lock = LabLock::acquire(&self.dirs.lab)?;
        let run_dir = self.dirs.lab.join("run");
        create_dir(&run_dir)?;
        let l2_initrd = self.l2_initrd(scenario, &run_dir)?;
        let machine = Machine {
            kernel: &self.images.vmlinuz,
            initrd: &l2_initrd,
            append: L1_CMDLINE,
            memory_mib: L2_DIRECT_MEMORY_MIB,
            cpus: L2_DIRECT_CPUS,
        };
        let raw = runner::run(&scenario.name, self.mode, &machine, scenario.timeout)?;
        outcome(scenario, raw, "l2.status")
    }

    /// Marks the image set as in use (its mtime), so other lab versions do not prune it.
    fn touch_images(&self) {
        if let Some(dir) = self.images.vmlinuz.parent() {
            let _ = File::open(dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
        }
    }

    /// `/lab/l2/initrd.gz`: the cached gzipped L2 archive, plus (if the scenario has an L2
    /// script) an uncompressed cpio with it, appended at a 4-byte boundary.
    fn l2_initrd(&self, scenario: &Scenario, run_dir: &Path) -> Result<PathBuf, LabError> {
        let path = run_dir.join("l2-initrd.gz");
        copy_file(&self.images.l2_base, &path)?;
        if let Some(script) = &scenario.l2_script {
            pad_to_4(&path)?;
            append_cpio(&path, |w| w.file("scenario.sh", 0o755, script.as_bytes()))?;
        }
        Ok(path)
    }

    /// The L1 initramfs of one run: cached base + an appended archive with the release
    /// binaries (and their libraries), the L2 initrd, the scenario script and files.
    fn l1_initrd(&self, scenario: &Scenario, l2_initrd: &Path, out: &Path) -> Result<(), LabError> {
        copy_file(&self.images.l1_base, out)?;
        let mut binaries: Vec<(String, PathBuf)> = release_executables(&self.dirs.release)?
            .into_iter()
            .map(|p| (format!("lab/bin/{}", file_name(&p)), p))
            .collect();
        binaries.extend(
            scenario
                .host_binaries
                .iter()
                .map(|p| (p.to_string_lossy().into_owned(), p.clone())),
        );
        let mut libs = BTreeSet::new();
        for (_, path) in &binaries {
            libs.extend(shared_libraries(path)?);
        }
        append_cpio(out, |w| {
            for (dest, src) in &binaries {
                w.host_file(dest, src)?;
            }
            for lib in &libs {
                w.host_file(&lib.to_string_lossy(), lib)?;
            }
            w.host_file("lab/l2/initrd.gz", l2_initrd)?;
            w.file("lab/scenario.sh", 0o755, scenario.script.as_bytes())?;
            for f in &scenario.files {
                w.file(&f.dest, f.mode, &f.data)?;
            }
            Ok(())
        })
    }
}

/// Whether L1's own kernel (not an L2 guest's) panicked: L1 prints its panic on its console
/// directly, while an L2 guest's console lines reach it through tinyvmm's stdout, after
/// which L1 keeps running and reports a status.
fn is_l1_kernel_panic(output: &str) -> bool {
    output.contains("Kernel panic - not syncing")
}

/// Environment variable naming the file every lab retry is appended to (one line each);
/// `scripts/test` sets it, prints the lines after the test run and fails above its budget.
pub const RETRY_LOG_ENV: &str = "TINYVMM_LAB_RETRY_LOG";

fn record_retry(line: &str) {
    let Some(path) = std::env::var_os(RETRY_LOG_ENV) else {
        return;
    };
    let appended = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = appended {
        eprintln!(
            "lab: WARNING: cannot record the retry in {}: {e}",
            path.to_string_lossy()
        );
    }
}

/// Reported by a scenario when an L2 guest that QEMU (not tinyvmm) runs inside L1 reset
/// without a panic, an oops or its final `l2.status` line: the nested-SVM triple fault the
/// README's lab section describes, with no tinyvmm VMM involved.
pub const L2_SILENT_RESET: &str = "lab.l2_silent_reset";

/// Why a run failed in the emulator rather than in tinyvmm (worth one more attempt), if it
/// did: a hang (every attempt of a real hang times out too), an L1 kernel panic, or an L2
/// guest under QEMU that reset silently.
fn emulation_failure(result: &Result<LabOutcome, LabError>) -> Option<String> {
    match result {
        Err(e @ LabError::Timeout { .. }) => Some(e.to_string().lines().next()?.to_string()),
        Err(LabError::NoStatus { output, .. }) if is_l1_kernel_panic(output) => {
            Some("L1 kernel panic".into())
        }
        Ok(out) => out
            .get(L2_SILENT_RESET)
            .map(|run| format!("L2 guest `{run}` under QEMU reset without a panic or oops")),
        Err(_) => None,
    }
}

fn outcome(
    scenario: &Scenario,
    raw: runner::RawRun,
    status_key: &str,
) -> Result<LabOutcome, LabError> {
    let status = raw.kv.get(status_key).and_then(|s| s.parse::<i32>().ok());
    let Some(status) = status else {
        return Err(LabError::NoStatus {
            scenario: scenario.name.clone(),
            qemu_status: raw.qemu_status.to_string(),
            tail: tail_lines(&raw.output, 30),
            output: raw.output,
        });
    };
    Ok(LabOutcome {
        status,
        kv: raw.kv,
        output: raw.output,
        elapsed: raw.elapsed,
        boot_to_init: raw.boot_to_init,
        scenario: scenario.name.clone(),
    })
}

/// Fails with "run `cargo build --release --workspace` first" if one of `names` is missing.
pub fn check_release_binaries(release: &Path, names: &[&str]) -> Result<(), LabError> {
    for name in names {
        let path = release.join(name);
        if !path.is_file() {
            return Err(LabError::MissingReleaseBinary { path });
        }
    }
    Ok(())
}

/// Prints a warning when a workspace source file is newer than target/release/tinyvmm: the
/// lab would test an old build. (A warning, not an error: mtimes can lie, e.g. after checkout.)
fn warn_if_stale(dirs: &LabDirs) {
    let binary = dirs.release.join("tinyvmm");
    let (Ok(built), Some(root)) = (
        binary.metadata().and_then(|m| m.modified()),
        dirs.target.parent(),
    ) else {
        return;
    };
    let Ok(members) = fs::read_dir(root) else {
        return;
    };
    for member in members.filter_map(Result::ok) {
        if let Some(newer) = newer_source(&member.path().join("src"), built) {
            println!(
                "lab: WARNING: {} is newer than {}; run `cargo build --release --workspace`",
                newer.display(),
                binary.display()
            );
            return;
        }
    }
}

/// The first `.rs` file under `dir` modified after `than`.
fn newer_source(dir: &Path, than: std::time::SystemTime) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let path = e.path();
            if path.is_dir() {
                return newer_source(&path, than);
            }
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            (path.extension().is_some_and(|x| x == "rs") && modified > than).then_some(path)
        })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Host-side tools of this crate that L1 does not need.
const HOST_ONLY_BINARIES: &[&str] = &["lab-run"];

/// Every executable file directly in `target/release` (tinyvmm, netctl, storage tools,
/// kvm-smoke, bench binaries: whichever exist), except [`HOST_ONLY_BINARIES`].
pub fn release_executables(release: &Path) -> Result<Vec<PathBuf>, LabError> {
    let entries = fs::read_dir(release).map_err(|source| LabError::ReadFile {
        path: release.to_path_buf(),
        source,
    })?;
    let mut bins: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            !file_name(p).contains('.') && !HOST_ONLY_BINARIES.contains(&file_name(p).as_str())
        })
        .filter(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .collect();
    bins.sort();
    Ok(bins)
}

/// Shared libraries (and the dynamic loader) `ldd` lists for `binary`; empty for static ones.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, LabError> {
    let out =
        Command::new("ldd")
            .arg(binary)
            .output()
            .map_err(|source| LabError::SpawnCommand {
                command: format!("ldd {}", binary.display()),
                source,
            })?;
    // ldd exits 1 with "not a dynamic executable" for static binaries.
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `ldd` output: `name => /path (addr)` and `/lib64/ld-linux-x86-64.so.2 (addr)`.
pub fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn copy_file(from: &Path, to: &Path) -> Result<(), LabError> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| LabError::WriteFile {
            path: to.to_path_buf(),
            source,
        })
}

/// Zero-pads `path` to a multiple of 4 bytes (the unpacker skips zeros between archives).
fn pad_to_4(path: &Path) -> Result<(), LabError> {
    let err = |source| LabError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new().append(true).open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    let pad = (4 - (len % 4) as usize) % 4;
    file.write_all(&[0u8; 3][..pad]).map_err(err)
}

/// Appends a second cpio archive to `path` (whose length is a multiple of 4, as the kernel's
/// unpacker expects headers 4-byte aligned across concatenated archives).
fn append_cpio(
    path: &Path,
    fill: impl FnOnce(&mut CpioWriter<BufWriter<File>>) -> std::io::Result<()>,
) -> Result<(), LabError> {
    let err = |source| LabError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new().append(true).open(path).map_err(err)?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    fill(&mut w).map_err(err)?;
    w.finish().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome_with(kv: &[(&str, &str)]) -> Result<LabOutcome, LabError> {
        Ok(LabOutcome {
            status: 0,
            kv: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            output: String::new(),
            elapsed: std::time::Duration::ZERO,
            boot_to_init: None,
            scenario: "t".into(),
        })
    }

    #[test]
    fn emulation_failure_when_l2_under_qemu_reset_silently_then_retryable_and_named() {
        let why = emulation_failure(&outcome_with(&[(L2_SILENT_RESET, "qtiny")]));
        assert_eq!(
            why.as_deref(),
            Some("L2 guest `qtiny` under QEMU reset without a panic or oops")
        );
        assert_eq!(
            emulation_failure(&outcome_with(&[("qtiny.exit", "0")])),
            None
        );
        let no_status = Err(LabError::NoStatus {
            scenario: "t".into(),
            qemu_status: "exit status: 0".into(),
            tail: String::new(),
            output: "tinyvmm: error: boom".into(),
        });
        assert_eq!(emulation_failure(&no_status), None);
        let panic = Err(LabError::NoStatus {
            scenario: "t".into(),
            qemu_status: "exit status: 0".into(),
            tail: String::new(),
            output: "Kernel panic - not syncing: stack-protector".into(),
        });
        assert_eq!(
            emulation_failure(&panic).as_deref(),
            Some("L1 kernel panic")
        );
    }

    #[test]
    fn parse_ldd_when_dynamic_binary_then_libs_and_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn check_release_binaries_when_one_missing_then_error_says_how_to_build() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("tinyvmm"), b"").unwrap();
        let msg = check_release_binaries(dir.path(), &["tinyvmm", "kvm-smoke"])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("kvm-smoke") && msg.contains("cargo build --release --workspace"),
            "{msg}"
        );
        check_release_binaries(dir.path(), &["tinyvmm"]).unwrap();
    }

    #[test]
    fn parse_ldd_when_static_then_empty() {
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn release_executables_when_mixed_files_then_only_executables_without_dots() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [
            ("tinyvmm", 0o755),
            ("tinyvmm.d", 0o755),
            ("libx.rlib", 0o644),
            ("notes", 0o644),
        ] {
            let p = dir.path().join(name);
            fs::write(&p, b"").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
        fs::create_dir(dir.path().join("deps")).unwrap();
        assert_eq!(
            release_executables(dir.path()).unwrap(),
            [dir.path().join("tinyvmm")]
        );
    }
}
