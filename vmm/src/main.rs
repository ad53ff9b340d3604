//! `tinyvmm`: run or validate a microVM described by a JSON config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

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
    /// grace period. SIGTERM or SIGINT press the ACPI power button (Ctrl-Alt-Del through the
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

fn main() -> ExitCode {
    let start = Instant::now();
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
        } => {
            let opts = vmm::cli::RunOptions {
                run_dir,
                storage_config,
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

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?} (off, error, warn, info, debug, trace)"))
}
