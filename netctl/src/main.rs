//! The `netctl` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use netctl::host::HostArgs;
use netctl::ops::{self, Ctx};
use netctl::report;
use vmconfig::exit::Status;

/// Per-VM isolated networks (bridges, TAPs, NAT, nftables) from tinyvmm VM config files.
#[derive(Parser)]
#[command(name = "netctl", version)]
struct Cli {
    /// The run dir of `tinyvmm run`, where `down` looks for running VMs' run locks
    /// (default: $TINYVMM_RUN_DIR or /run/tinyvmm).
    #[arg(long, global = true)]
    run_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone, Default)]
struct HostFlags {
    /// Host settings file (JSON: uplink, tap_user, tap_group, egress, tailscale_interface, subnet_range).
    #[arg(long = "host")]
    host_file: Option<PathBuf>,
    /// Uplink interface for NAT (default: the last apply's, else the default route's).
    #[arg(long)]
    uplink: Option<String>,
    /// User (name or uid) that owns the TAPs.
    #[arg(long)]
    tap_user: Option<String>,
    /// Group (name or gid) that owns the TAPs.
    #[arg(long)]
    tap_group: Option<String>,
    /// Egress policy: `all`, `none`, or a list like `tcp:80,tcp:443,udp:53`.
    #[arg(long)]
    egress: Option<String>,
    /// Tailscale interface allowed to reach the VM subnets (default tailscale0).
    #[arg(long)]
    tailscale_if: Option<String>,
    /// The VM subnet range this host owns (e.g. 10.1.0.0/16): VM subnets outside it are refused.
    #[arg(long)]
    subnet_range: Option<String>,
}

impl From<HostFlags> for HostArgs {
    fn from(f: HostFlags) -> Self {
        HostArgs {
            host_file: f.host_file,
            uplink: f.uplink,
            tap_user: f.tap_user,
            tap_group: f.tap_group,
            egress: f.egress,
            tailscale_if: f.tailscale_if,
            subnet_range: f.subnet_range,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Print what apply would change, including the nftables ruleset.
    Plan {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        host: HostFlags,
    },
    /// Converge the host to the files (merged with VMs applied before).
    Apply {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        host: HostFlags,
    },
    /// What exists vs what the files (or, without files, the recorded state) declare.
    /// Exits 8 (drift) when something differs.
    Status { files: Vec<PathBuf> },
    /// Remove exactly what netctl created for these VMs.
    Down {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also when a VM is running (its tinyvmm run lock is held).
        #[arg(long)]
        force: bool,
    },
    /// Print the subnets for `tailscale set --advertise-routes`.
    TailscaleRoutes {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Run `tailscale set --advertise-routes=…` (replaces the advertised list).
        #[arg(long)]
        apply: bool,
    },
}

fn run(cli: Cli) -> netctl::Result<Status> {
    let run_dir = cli
        .run_dir
        .clone()
        .unwrap_or_else(vmconfig::default_run_dir);
    match cli.cmd {
        Cmd::Plan { files, host } => {
            let ctx = Ctx::open(false)?;
            let p = ops::make_plan(&ctx, &files, &host.into())?;
            print!("{}", ops::describe(&p, true));
        }
        Cmd::Apply { files, host } => {
            let ctx = Ctx::open(true)?;
            let p = ops::make_plan(&ctx, &files, &host.into())?;
            print!("{}", ops::describe(&p, false));
            if ops::apply(&ctx, &p)? {
                println!("applied");
            }
        }
        Cmd::Status { files } => {
            let ctx = Ctx::open(false)?;
            let s = report::status(&ctx, &files)?;
            for l in &s.lines {
                println!("{l}");
            }
            if !s.in_sync {
                println!("status: out of sync");
                return Ok(Status::Drift);
            }
            println!("status: in sync");
        }
        Cmd::Down { files, force } => {
            let ctx = Ctx::open(true)?;
            let r = ops::down(&ctx, &files, force, &run_dir)?;
            if r.is_empty() {
                println!("nothing to remove: netctl manages none of these VMs here");
            }
            for l in r {
                println!("{l}");
            }
        }
        Cmd::TailscaleRoutes { files, apply } => {
            let routes = report::tailscale_routes(&files)?;
            println!("{routes}");
            if apply {
                report::tailscale_apply(&routes)?;
                println!("tailscale: advertising {routes}");
            }
        }
    }
    Ok(Status::Ok)
}

fn main() -> ExitCode {
    vmconfig::exit::install_panic_hook("netctl", || {});
    let cli = Cli::parse();
    match run(cli) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("netctl: error: {}", vmconfig::exit::error_chain(&e));
            e.exit_status().into()
        }
    }
}
