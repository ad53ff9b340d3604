//! The `run` and `validate` commands: config in, exit status out, errors printed with context.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmconfig::VmConfig;

use crate::exit_code::RunExit;
use crate::terminal::RawTerminal;
use crate::timing::{Milestone, Timing};

/// `tinyvmm validate`: prints every problem, or "ok".
pub fn validate(path: &Path) -> RunExit {
    match vmconfig::load(path) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} vCPUs, {} MiB)",
                path.display(),
                cfg.vcpus,
                cfg.memory_mib
            );
            RunExit::Poweroff
        }
        Err(e) => {
            eprintln!("{e}");
            RunExit::InvalidConfig
        }
    }
}

/// Host-side settings of `tinyvmm run` that are not part of the VM config.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Where the run lock lives (default [`vmconfig::lock::default_run_dir`]).
    pub run_dir: Option<PathBuf>,
    /// The host storage config for `snapshot_on_start`.
    pub storage_config: Option<PathBuf>,
}

/// `tinyvmm run`: builds and runs the VM, returning how it ended.
pub fn run(path: &Path, opts: &RunOptions, mut timing: Timing) -> RunExit {
    // Block the shutdown signals before any thread exists, so every thread inherits the mask
    // and only the signalfd sees them.
    let mask = match crate::control::block_shutdown_signals() {
        Ok(mask) => mask,
        Err(e) => return fail(&e),
    };
    let cfg = match vmconfig::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return RunExit::InvalidConfig;
        }
    };
    timing.set_enabled(cfg.boot_timer);
    timing.mark(Milestone::ConfigParsed);
    if let Err(e) = check_unsupported(&cfg).and_then(|()| check_host_memory(&cfg)) {
        eprintln!("tinyvmm: {}: {e}", path.display());
        return RunExit::InvalidConfig;
    }

    let run_dir = opts
        .run_dir
        .clone()
        .unwrap_or_else(vmconfig::lock::default_run_dir);
    let _lock = match vmconfig::lock::RunLock::acquire(&run_dir, &cfg.name) {
        Ok(lock) => lock,
        Err(e) => return fail(&e),
    };
    if let Err(e) = snapshot_before_boot(&cfg, opts.storage_config.as_deref()) {
        return fail(&e);
    }
    let machine = match crate::builder::build(&cfg, timing) {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    let mut terminal = RawTerminal::enter();
    let grace = Duration::from_secs(cfg.shutdown_grace_secs);
    let outcome = crate::run::run(machine, &mask, grace);
    terminal.restore();
    timing.mark(Milestone::Exit);
    match outcome {
        Ok(exit) => {
            log::info!(
                "VM {} ended: {exit:?} (exit status {})",
                cfg.name,
                exit.code()
            );
            exit
        }
        Err(e) => fail(&e),
    }
}

/// Takes the snapshot the config asks for (`storage.snapshot_on_start`), with retention. Runs
/// while this process holds the VM's run lock, so nothing can roll the dataset back meanwhile.
/// A failure stops the boot: the user asked for a restore point before the guest runs.
fn snapshot_before_boot(
    cfg: &VmConfig,
    storage_config: Option<&Path>,
) -> Result<(), storage::StorageError> {
    if !cfg.storage.snapshot_on_start {
        return Ok(());
    }
    let host = match storage_config {
        Some(path) => storage::HostStorageConfig::load(path, true)?,
        None => storage::HostStorageConfig::load(
            Path::new(storage::config::DEFAULT_CONFIG_PATH),
            false,
        )?,
    };
    let store = storage::Store::open(&host)?;
    if let Some(snap) = store.snapshot_on_start(&cfg.name, &cfg.storage)? {
        log::info!(
            "snapshot {} of {} taken before boot; pruned {:?}",
            snap.taken,
            cfg.name,
            snap.pruned
        );
    }
    Ok(())
}

/// Refuses config sections this build cannot honour yet, instead of booting a guest that
/// silently lacks them.
fn check_unsupported(cfg: &VmConfig) -> Result<(), String> {
    if let Some(sock) = &cfg.control_socket {
        log::warn!(
            "control_socket {}: the control socket is not implemented yet; ignored",
            sock.display()
        );
    }
    Ok(())
}

/// Refuses a memory size the host cannot back, before anything is created.
fn check_host_memory(cfg: &VmConfig) -> Result<(), String> {
    let Some(total_kib) = host_mem_total_kib() else {
        return Ok(());
    };
    let want_kib = cfg.memory_mib.saturating_mul(1024);
    if want_kib > total_kib {
        return Err(format!(
            "memory_mib: {} MiB does not fit in this host's {} MiB of RAM",
            cfg.memory_mib,
            total_kib / 1024
        ));
    }
    Ok(())
}

fn host_mem_total_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Prints an error with its whole chain of causes and returns [`RunExit::Error`].
fn fail(e: &dyn std::error::Error) -> RunExit {
    eprintln!("tinyvmm: error: {}", error_chain(e));
    RunExit::Error
}

/// `outer: cause: root cause`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("load the kernel /k")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_when_nested_then_lists_every_cause() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ));
        assert_eq!(error_chain(&e), "load the kernel /k: no such file");
    }

    #[test]
    fn host_mem_total_when_read_then_positive() {
        assert!(host_mem_total_kib().unwrap() > 0);
    }
}
