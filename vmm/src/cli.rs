//! The `run` and `validate` commands: config in, exit status out, errors printed with context.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vmconfig::VmConfig;

use crate::api::live::LiveVm;
use crate::api::server::{ControlServer, SocketOwner};
use crate::control::ControlRequests;
use crate::exit_code::RunExit;
use crate::pause::VcpuPause;
use crate::run::RunShared;
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
    /// Owner and group of the control socket.
    pub socket_owner: SocketOwner,
}

/// `<run_dir>/<name>.sock`: where the CLI looks for a VM's control socket (a symlink when
/// `control_socket` puts the socket elsewhere).
pub fn socket_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.sock"))
}

/// `<run_dir>/<name>.exit`: the exit status of the VM's last run, written just before its
/// run lock is released.
pub fn exit_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.exit"))
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
    if let Err(e) = check_host_memory(&cfg) {
        // The config is fine; this host cannot run it now.
        eprintln!("tinyvmm: error: {}: {e}", path.display());
        return RunExit::Error;
    }

    let run_dir = opts
        .run_dir
        .clone()
        .unwrap_or_else(vmconfig::lock::default_run_dir);
    let _lock = match vmconfig::lock::RunLock::acquire(&run_dir, &cfg.name) {
        Ok(lock) => lock,
        Err(e @ vmconfig::LockError::AlreadyRunning { .. }) => {
            eprintln!("tinyvmm: refused: {}", error_chain(&e));
            return RunExit::Refused;
        }
        Err(e) => return fail(&e),
    };
    let _ = std::fs::remove_file(exit_path(&run_dir, &cfg.name));
    if let Err(e) = snapshot_before_boot(&cfg, opts.storage_config.as_deref()) {
        return fail(&e);
    }
    let machine = match crate::builder::build(&cfg, timing) {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    let shared = match run_shared(&cfg) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let live = LiveVm::new(
        &cfg,
        timing.start(),
        shared.pause.clone(),
        shared.requests.clone(),
        machine.platform.net_counters.clone(),
    );
    let _server = match start_control_socket(&cfg, &run_dir, opts.socket_owner, live) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut terminal = RawTerminal::enter();
    let grace = Duration::from_secs(cfg.shutdown_grace_secs);
    let outcome = crate::run::run(machine, &mask, grace, &shared);
    terminal.restore();
    timing.mark(Milestone::Exit);
    let exit = outcome_exit(&cfg, outcome);
    write_exit_status(&run_dir, &cfg.name, exit);
    exit
}

/// Errors setting up the control socket's side of a run.
#[derive(Debug, thiserror::Error)]
pub enum ControlSetupError {
    #[error("install the vCPU kick signal handler")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    #[error("create the control request event")]
    Requests(#[source] std::io::Error),
    #[error(transparent)]
    Server(#[from] crate::api::server::ServerError),
    #[error("link {} to the control socket", link.display())]
    Link {
        link: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn run_shared(cfg: &VmConfig) -> Result<RunShared, ControlSetupError> {
    crate::vcpu::install_kick_handler().map_err(ControlSetupError::KickHandler)?;
    Ok(RunShared {
        pause: Arc::new(VcpuPause::new(cfg.vcpus as usize)),
        requests: Arc::new(ControlRequests::new().map_err(ControlSetupError::Requests)?),
    })
}

/// Binds the VM's control socket (we hold the run lock, so anything there is stale).
fn start_control_socket(
    cfg: &VmConfig,
    run_dir: &Path,
    owner: SocketOwner,
    live: LiveVm,
) -> Result<ControlServer, ControlSetupError> {
    let default = socket_path(run_dir, &cfg.name);
    let path = cfg
        .control_socket
        .clone()
        .unwrap_or_else(|| default.clone());
    let server = ControlServer::start(&path, owner, Arc::new(live))?;
    if path != default {
        let _ = std::fs::remove_file(&default);
        std::os::unix::fs::symlink(&path, &default).map_err(|source| ControlSetupError::Link {
            link: default.clone(),
            source,
        })?;
    }
    log::info!("control socket at {}", path.display());
    Ok(server)
}

fn write_exit_status(run_dir: &Path, name: &str, exit: RunExit) {
    let path = exit_path(run_dir, name);
    if let Err(e) = std::fs::write(&path, format!("{}\n", exit.code())) {
        log::warn!("cannot write the exit status to {}: {e}", path.display());
    }
}

fn outcome_exit(cfg: &VmConfig, outcome: Result<RunExit, crate::run::RunError>) -> RunExit {
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

pub use vmconfig::exit::error_chain;

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
