//! `tinyvmm`: run or validate a microVM described by a JSON config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use vmm::exit_code::RunExit;
use vmm::timing::Timing;

/// A small KVM virtual machine monitor for isolated Linux microVMs.
#[derive(Debug, Parser)]
#[command(name = "tinyvmm", version, about)]
struct Cli {
    /// Log level: off, error, warn, info, debug or trace (default: $TINYVMM_LOG or warn).
    #[arg(long, global = true, value_parser = parse_level)]
    log_level: Option<log::LevelFilter>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot the VM described by CONFIG and run it until it powers off.
    ///
    /// Exit status: 0 guest powered off, 1 error, 2 invalid config, 3 guest reboot or reset
    /// (also a kernel panic with panic=N when the guest has no pvpanic driver), 4 guest crash
    /// (kernel panic reported through pvpanic, KVM internal error), 5 stopped hard after the shutdown
    /// grace period, 6 internal error (a bug), 7 refused: the VM is already running. SIGTERM or SIGINT press the ACPI power button (Ctrl-Alt-Del through the
    /// i8042 when the cmdline has acpi=off; a reboot after that request exits 0); a second
    /// signal, or the end of `shutdown_grace_secs`, stops the VM at once.
    Run {
        /// The VM config (JSON).
        config: PathBuf,
        /// Where the run lock lives (default: $TINYVMM_RUN_DIR or /run/tinyvmm).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Host storage config used when the VM asks for `snapshot_on_start`
        /// (default: /etc/tinyvmm/storage.json if it exists, else the built-in defaults).
        #[arg(long)]
        storage_config: Option<PathBuf>,
        /// Owner of the control socket (user name or uid; default: this process's user).
        #[arg(long)]
        socket_owner: Option<String>,
        /// Group of the control socket (group name or gid; members may control the VM).
        #[arg(long)]
        socket_group: Option<String>,
    },
    /// List every VM in the run dir: name, state, pid, uptime, vCPUs, memory, address.
    Ls {
        #[command(flatten)]
        dir: RunDir,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one running VM's status and device counters.
    Status {
        vm: String,
        #[command(flatten)]
        dir: RunDir,
        #[arg(long)]
        json: bool,
    },
    /// Shut a VM down (as SIGTERM does) and wait until its process is gone; exits with the
    /// VM's exit status.
    Stop {
        vm: String,
        #[command(flatten)]
        dir: RunDir,
        /// Give up waiting after S seconds (exit 1; the VM keeps its own grace period).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Stop it at once instead of pressing the power button.
        #[arg(long)]
        force: bool,
    },
    /// Park every vCPU of a VM.
    Pause {
        vm: String,
        #[command(flatten)]
        dir: RunDir,
    },
    /// Run a paused VM again.
    Resume {
        vm: String,
        #[command(flatten)]
        dir: RunDir,
    },
    /// Serve a directory to a VM over vhost-user (virtio-fs), like upstream virtiofsd.
    ///
    /// Exits when the VMM disconnects. `--sandbox namespace` (the default) needs root; without
    /// it the server runs unconfined with a warning.
    Virtiofsd(vmm::virtiofsd::VirtiofsdArgs),
    /// Check CONFIG and report every problem with its JSON path and line.
    Validate {
        /// The VM config (JSON).
        config: PathBuf,
    },
    /// systemd integration (README "Running VMs as systemd services").
    Systemd {
        #[command(subcommand)]
        command: SystemdCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SystemdCommand {
    /// Write tinyvmm@.service, tinyvmm-net.service, tinyvmm-storage@.service, tinyvmms.target
    /// and, per CONFIG, a drop-in with its stop timeout into PREFIX/etc/systemd/system.
    Install {
        /// Root to install below (default: /).
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
        /// Where tinyvmm, netctl and tinyvmm-storage are installed, as the units call them.
        #[arg(long, default_value = "/usr/bin")]
        bin_dir: PathBuf,
        /// VM configs to write drop-ins for (e.g. /etc/tinyvmm/vm1.json).
        configs: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunDir {
    /// The run dir of `tinyvmm run` (default: $TINYVMM_RUN_DIR or /run/tinyvmm).
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

impl RunDir {
    fn path(&self) -> PathBuf {
        self.run_dir
            .clone()
            .unwrap_or_else(vmconfig::lock::default_run_dir)
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    vmm::terminal::install_panic_hook();
    if std::env::var_os("TINYVMM_TEST_PANIC").is_some() {
        // For the exit-code test only: proves the hook end to end in the real binary.
        panic!("TINYVMM_TEST_PANIC is set");
    }
    let cli = Cli::parse();
    let level = cli.log_level.unwrap_or_else(|| {
        std::env::var("TINYVMM_LOG")
            .ok()
            .and_then(|v| parse_level(&v).ok())
            .unwrap_or(log::LevelFilter::Warn)
    });
    vmm::logger::init(level);
    let code = match cli.command {
        Command::Run {
            config,
            run_dir,
            storage_config,
            socket_owner,
            socket_group,
        } => {
            let socket_owner = match parse_owner(socket_owner.as_deref(), socket_group.as_deref()) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("tinyvmm: {e}");
                    return ExitCode::from(RunExit::InvalidConfig.code() as u8);
                }
            };
            let opts = vmm::cli::RunOptions {
                run_dir,
                storage_config,
                socket_owner,
            };
            vmm::cli::run(&config, &opts, Timing::new(start, false))
        }
        Command::Validate { config } => vmm::cli::validate(&config),
        Command::Virtiofsd(args) => vmm::virtiofsd::run(args),
        Command::Systemd {
            command:
                SystemdCommand::Install {
                    prefix,
                    bin_dir,
                    configs,
                },
        } => systemd_install(&prefix, &bin_dir, &configs),
        other => return manage(other),
    };
    match code {
        RunExit::Poweroff => ExitCode::SUCCESS,
        other => ExitCode::from(other.code() as u8),
    }
}

fn systemd_install(prefix: &Path, bin_dir: &Path, configs: &[PathBuf]) -> RunExit {
    match vmm::systemd::install(prefix, bin_dir, configs) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            println!("run `systemctl daemon-reload` to load them");
            RunExit::Poweroff
        }
        Err(e @ vmm::systemd::InstallError::LoadConfig(..)) => {
            eprintln!("tinyvmm: {}", vmm::cli::error_chain(&e));
            RunExit::InvalidConfig
        }
        Err(e) => {
            eprintln!("tinyvmm: error: {}", vmm::cli::error_chain(&e));
            RunExit::Error
        }
    }
}

/// The VM-management commands; exit 0 on success, 1 on error (`stop`: the VM's exit status).
fn manage(command: Command) -> ExitCode {
    use vmm::commands;
    let result = match command {
        Command::Ls { dir, json } => commands::list(&dir.path()).map(|vms| {
            if json {
                println!("{}", serde_json::to_string_pretty(&vms).unwrap_or_default());
            } else {
                print!("{}", commands::format_table(&vms));
            }
            ExitCode::SUCCESS
        }),
        Command::Status { vm, dir, json } => commands::status(&dir.path(), &vm).map(|s| {
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", format_status(&s));
            }
            ExitCode::SUCCESS
        }),
        Command::Stop {
            vm,
            dir,
            timeout,
            force,
        } => commands::stop(&dir.path(), &vm, Duration::from_secs(timeout), force).map(|code| {
            match code {
                Some(code) => {
                    println!("{vm}: stopped, exit status {code}");
                    ExitCode::from(u8::try_from(code).unwrap_or(1))
                }
                None => {
                    println!("{vm}: stopped (no exit status recorded)");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Pause { vm, dir } => {
            commands::pause(&dir.path(), &vm, true).map(|()| ExitCode::SUCCESS)
        }
        Command::Resume { vm, dir } => {
            commands::pause(&dir.path(), &vm, false).map(|()| ExitCode::SUCCESS)
        }
        Command::Run { .. }
        | Command::Validate { .. }
        | Command::Virtiofsd(_)
        | Command::Systemd { .. } => unreachable!("handled in main"),
    };
    result.unwrap_or_else(|e| {
        eprintln!("tinyvmm: error: {}", vmm::cli::error_chain(&e));
        ExitCode::FAILURE
    })
}

fn format_status(s: &vmm::api::VmStatus) -> String {
    let mut out = format!(
        "name: {}\nstate: {:?}\npid: {}\nuptime_ms: {}\nvcpus: {}\nmemory_mib: {}\nkernel: {}\n",
        s.name, s.state, s.pid, s.uptime_ms, s.vcpus, s.memory_mib, s.kernel
    );
    if let Some(us) = s.boot_timer_us {
        out.push_str(&format!("boot_timer_us: {us}\n"));
    }
    for a in &s.addresses {
        out.push_str(&format!("address: {a}\n"));
    }
    for (dev, counters) in &s.devices {
        out.push_str(&format!("{dev}: {counters}\n"));
    }
    out
}

/// `--socket-owner` / `--socket-group`: names or numeric ids.
fn parse_owner(
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<vmm::api::server::SocketOwner, String> {
    use nix::unistd::{Group, User};
    let uid = match owner {
        None => None,
        Some(o) => Some(match o.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match User::from_name(o) {
                Ok(Some(u)) => u.uid.as_raw(),
                _ => return Err(format!("--socket-owner: no such user {o:?}")),
            },
        }),
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match Group::from_name(g) {
                Ok(Some(gr)) => gr.gid.as_raw(),
                _ => return Err(format!("--socket-group: no such group {g:?}")),
            },
        }),
    };
    Ok(vmm::api::server::SocketOwner { uid, gid })
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?} (off, error, warn, info, debug, trace)"))
}
