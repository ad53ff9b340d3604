//! The `tinyvmm-storage` command line.
//!
//! Exit codes ([`vmconfig::exit::Status`], shared with tinyvmm and netctl): 0 success
//! (including "already exists" / "nothing to do"), 1 the operation failed, 2 invalid usage,
//! names or config, 6 internal error, 7 refused for safety (the VM is running, or a destroy
//! was not confirmed).

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use vmconfig::exit::Status;

use crate::backend::Outcome;
use crate::config::{detect, BackendChoice, HostStorageConfig, DEFAULT_CONFIG_PATH};
use crate::error::StorageError;
use crate::store::{Destroyed, Store};
use crate::timestamp::Utc;

/// Per-VM datasets with snapshots and rollback (zfs, btrfs or plain directories).
#[derive(Debug, Parser)]
#[command(name = "tinyvmm-storage", version)]
pub struct Cli {
    /// Host storage config (JSON). Default /etc/tinyvmm/storage.json, if it exists.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Backend; `auto` detects it from the file system of --root.
    #[arg(long, global = true, value_enum)]
    backend: Option<BackendArg>,
    /// Directory holding one directory per VM (default /var/lib/microvms).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// ZFS parent dataset mounted at --root (e.g. rpool/microvms).
    #[arg(long, global = true, value_name = "DATASET")]
    dataset: Option<String>,
    /// Owner of each VM's directory, etc/ and var/: user[:group].
    #[arg(long, global = true, value_name = "USER[:GROUP]")]
    owner: Option<String>,
    /// tinyvmm's run-lock directory (default $TINYVMM_RUN_DIR or /run/tinyvmm).
    #[arg(long, global = true, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Zfs,
    Btrfs,
    Dir,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the backend detected for --root.
    Detect,
    /// Create the parent dataset/subvolume/directory at --root.
    Init,
    /// Create a VM's dataset with etc/ and var/.
    Create { vm: String },
    /// List VMs.
    List,
    /// Take a snapshot (default name: UTC time, e.g. 20261126T034350Z).
    Snapshot { vm: String, name: Option<String> },
    /// List a VM's snapshots, oldest first.
    Snapshots { vm: String },
    /// Return a stopped VM's files to a snapshot.
    Rollback {
        vm: String,
        snap: String,
        /// ZFS only: allow destroying the snapshots newer than SNAP.
        #[arg(long)]
        destroy_newer: bool,
    },
    /// Create NEW_VM from a snapshot of VM (a template).
    Clone {
        vm: String,
        snap: String,
        new_vm: String,
    },
    /// Delete all but the newest N snapshots.
    Prune {
        vm: String,
        #[arg(long, value_name = "N")]
        keep: usize,
    },
    /// Delete a stopped VM and all its snapshots.
    Destroy {
        vm: String,
        /// Do not ask for the VM name as confirmation.
        #[arg(long)]
        force: bool,
    },
}

impl Cli {
    /// The host config: the file (named or default), then the flags on top.
    fn host_config(&self) -> Result<HostStorageConfig, StorageError> {
        let mut cfg = match &self.config {
            Some(path) => HostStorageConfig::load(path, true)?,
            None => HostStorageConfig::load(std::path::Path::new(DEFAULT_CONFIG_PATH), false)?,
        };
        if let Some(b) = self.backend {
            cfg.backend = match b {
                BackendArg::Auto => BackendChoice::Auto,
                BackendArg::Zfs => BackendChoice::Zfs,
                BackendArg::Btrfs => BackendChoice::Btrfs,
                BackendArg::Dir => BackendChoice::Dir,
            };
        }
        if let Some(root) = &self.root {
            cfg.root = root.clone();
        }
        if let Some(ds) = &self.dataset {
            cfg.dataset = Some(ds.clone());
        }
        if let Some(owner) = &self.owner {
            cfg.owner = Some(owner.clone());
        }
        if let Some(dir) = &self.run_dir {
            cfg.run_dir = Some(dir.clone());
        }
        cfg.check()?;
        Ok(cfg)
    }
}

/// Exit status for an error.
pub fn exit_status(err: &StorageError) -> Status {
    match err {
        StorageError::InvalidName { .. }
        | StorageError::ReadConfig { .. }
        | StorageError::ParseConfig { .. }
        | StorageError::InvalidConfig(_)
        | StorageError::ResolveOwner { .. } => Status::Invalid,
        StorageError::VmRunning { .. } | StorageError::NotConfirmed(_) => Status::Refused,
        _ => Status::Failed,
    }
}

/// Runs the CLI: parses `argv` (including the program name), reads confirmations from
/// `input`, prints results to `out` and errors to `err`. Returns the exit code.
pub fn run(
    argv: impl IntoIterator<Item = OsString>,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let text = e.render().to_string();
            let _ = if code == 0 {
                write!(out, "{text}")
            } else {
                write!(err, "{text}")
            };
            return code;
        }
    };
    match execute(&cli, input, out, err) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "tinyvmm-storage: {}", chain(&e));
            i32::from(exit_status(&e).code())
        }
    }
}

pub use vmconfig::exit::error_chain as chain;

fn execute(
    cli: &Cli,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), StorageError> {
    let cfg = cli.host_config()?;
    if let Command::Detect = cli.command {
        let kind = detect(&cfg.root)?;
        match crate::config::mount_source(&cfg.root) {
            Some(ds) if kind == crate::config::BackendKind::Zfs => {
                let _ = writeln!(out, "{kind} (dataset {ds})");
            }
            _ => {
                let _ = writeln!(out, "{kind}");
            }
        }
        return Ok(());
    }
    let store = Store::open(&cfg)?;
    let kind = store.kind();
    let w = |out: &mut dyn Write, text: String| {
        let _ = writeln!(out, "{text}");
    };
    match &cli.command {
        Command::Detect => {}
        Command::Init => match store.init()? {
            Outcome::Created => w(
                out,
                format!("initialised {kind} storage at {}", cfg.root.display()),
            ),
            Outcome::AlreadyExisted => w(
                out,
                format!(
                    "{kind} storage at {} is already initialised",
                    cfg.root.display()
                ),
            ),
        },
        Command::Create { vm } => {
            let path = store.vm_path(vm);
            match store.create(vm)? {
                Outcome::Created => w(out, format!("created VM {vm} at {}", path.display())),
                Outcome::AlreadyExisted => w(
                    out,
                    format!(
                        "VM {vm} already exists at {} with etc/ and var/; nothing to do",
                        path.display()
                    ),
                ),
            }
        }
        Command::List => {
            w(out, "NAME\tRUNNING\tSNAPSHOTS\tPATH".into());
            for vm in store.list()? {
                let snaps = vm.snapshots.map_or("-".to_string(), |n| n.to_string());
                let running = if vm.running { "yes" } else { "no" };
                w(
                    out,
                    format!("{}\t{running}\t{snaps}\t{}", vm.name, vm.path.display()),
                );
            }
        }
        Command::Snapshot { vm, name } => {
            let snap = store.snapshot(vm, name.as_deref())?;
            w(out, format!("created snapshot {vm}@{snap}"));
        }
        Command::Snapshots { vm } => {
            w(out, "NAME\tCREATED\tUSED".into());
            for s in store.snapshots(vm)? {
                let created = s
                    .created
                    .map_or("-".into(), |t| Utc::from_unix(t).display());
                let used = s.used.map_or("-".into(), |u| u.to_string());
                w(out, format!("{}\t{created}\t{used}", s.name));
            }
        }
        Command::Rollback {
            vm,
            snap,
            destroy_newer,
        } => {
            store.rollback(vm, snap, *destroy_newer)?;
            w(out, format!("rolled back VM {vm} to snapshot {snap}"));
        }
        Command::Clone { vm, snap, new_vm } => {
            store.clone_vm(vm, snap, new_vm)?;
            w(
                out,
                format!(
                    "created VM {new_vm} at {} from {vm}@{snap}",
                    store.vm_path(new_vm).display()
                ),
            );
        }
        Command::Prune { vm, keep } => {
            let deleted = store.prune(vm, *keep)?;
            for d in &deleted {
                w(out, format!("deleted snapshot {vm}@{d}"));
            }
            w(
                out,
                format!(
                    "pruned {} snapshot(s) of {vm}, keeping at most {keep}",
                    deleted.len()
                ),
            );
        }
        Command::Destroy { vm, force } => destroy(&store, vm, *force, input, out, err)?,
    }
    Ok(())
}

fn destroy(
    store: &Store,
    vm: &str,
    force: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), StorageError> {
    crate::name::validate_vm_name(vm)?;
    if !force && store.vm_path(vm).exists() {
        let snaps = match store.snapshots(vm) {
            Ok(s) if store.supports_snapshots() => format!(" and its {} snapshot(s)", s.len()),
            _ => String::new(),
        };
        let _ = write!(
            err,
            "This deletes VM {vm} at {}{snaps}. Type the VM name to confirm: ",
            store.vm_path(vm).display()
        );
        let _ = err.flush();
        let mut line = String::new();
        let _ = input.read_line(&mut line);
        if line.trim() != vm {
            return Err(StorageError::NotConfirmed(vm.to_string()));
        }
    }
    match store.destroy(vm)? {
        Destroyed::Destroyed => {
            let _ = writeln!(out, "destroyed VM {vm}");
        }
        Destroyed::NotFound => {
            let _ = writeln!(out, "VM {vm} does not exist; nothing to destroy");
        }
    }
    Ok(())
}
