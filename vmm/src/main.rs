//! `tinyvmm`: run or validate a microVM described by a JSON config.

use std::path::PathBuf;
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
    /// grace period. SIGTERM or SIGINT press the ACPI power button; a second signal, or the end of
    /// `shutdown_grace_secs`, stops the VM at once.
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
}

fn main() -> ExitCode {
    let start = Instant::now();
    vmm::terminal::install_panic_hook(RunExit::Panic.code());
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
        } => {
            let opts = vmm::cli::RunOptions {
                run_dir,
                storage_config,
            };
            vmm::cli::run(&config, &opts, Timing::new(start, false))
        }
        Command::Validate { config } => vmm::cli::validate(&config),
        Command::Virtiofsd(args) => vmm::virtiofsd::run(args),
    };
    match code {
        RunExit::Poweroff => ExitCode::SUCCESS,
        other => ExitCode::from(other.code() as u8),
    }
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?} (off, error, warn, info, debug, trace)"))
}
