//! lab-run: run one lab scenario by hand.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run -p tinyvmm-lab --bin lab-run -- --script my-l1.sh [--l2-script my-l2.sh] \
//!     [--file /lab/vm.json=./vm.json] [--host-binary /usr/sbin/nft] \
//!     [--mode fast|deterministic] [--timeout 120] [--repeat 3]
//! ```
//! Streams L1's console, then prints the reported key=value pairs and the timings. Exits with
//! the scenario's status (or 1 if the lab itself failed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use lab::{Lab, LabError, Mode, Scenario};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Fast,
    Deterministic,
}

#[derive(Debug, Parser)]
#[command(about = "Run one tinyvmm lab scenario (L1 under QEMU TCG with nested SVM)")]
struct Args {
    /// L1 shell script (busybox sh); default: just boot and report.
    #[arg(long)]
    script: Option<PathBuf>,
    /// L2 shell script, run by the L2 guest's init (in /lab/l2/initrd.gz).
    #[arg(long)]
    l2_script: Option<PathBuf>,
    /// Extra file for L1 as DEST=HOST_PATH (DEST absolute inside L1).
    #[arg(long = "file")]
    files: Vec<String>,
    /// Host executable copied into L1 at the same path, with its shared libraries.
    #[arg(long = "host-binary")]
    host_binaries: Vec<PathBuf>,
    /// QEMU mode.
    #[arg(long, value_enum, default_value = "fast")]
    mode: ModeArg,
    /// Hard timeout in seconds (L1 boot included).
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Boot L1 this many times (timing).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Scenario name.
    #[arg(long, default_value = "by-hand")]
    name: String,
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("read {path}: {source}")]
    ReadInput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--file {0}: expected DEST=HOST_PATH")]
    FileArgument(String),
    #[error(transparent)]
    Lab(#[from] LabError),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, RunError> {
    std::fs::read(path).map_err(|source| RunError::ReadInput {
        path: path.clone(),
        source,
    })
}

fn scenario(args: &Args) -> Result<Scenario, RunError> {
    let mut s = Scenario::new(&args.name).timeout(Duration::from_secs(args.timeout));
    if let Some(p) = &args.script {
        s = s.script(&String::from_utf8_lossy(&read(p)?));
    }
    if let Some(p) = &args.l2_script {
        s = s.l2_script(&String::from_utf8_lossy(&read(p)?));
    }
    for b in &args.host_binaries {
        s = s.host_binary(b);
    }
    for f in &args.files {
        let (dest, src) = f
            .split_once('=')
            .ok_or_else(|| RunError::FileArgument(f.clone()))?;
        s = s.file(dest, read(&PathBuf::from(src))?);
    }
    Ok(s)
}

fn run(args: &Args) -> Result<i32, RunError> {
    let mode = match args.mode {
        ModeArg::Fast => Mode::Fast,
        ModeArg::Deterministic => Mode::Deterministic,
    };
    let scenario = scenario(args)?;
    let lab = Lab::new(mode)?;
    let mut status = 0;
    for i in 1..=args.repeat {
        let out = lab.run(&scenario)?;
        for (k, v) in &out.kv {
            println!("{k}={v}");
        }
        println!(
            "run {i}/{}: mode={mode:?} status={} boot_to_init={:.2}s elapsed={:.2}s",
            args.repeat,
            out.status,
            out.boot_to_init.map_or(f64::NAN, |d| d.as_secs_f64()),
            out.elapsed.as_secs_f64()
        );
        status = out.status;
    }
    Ok(status)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(e) => {
            eprintln!("lab-run: {e}");
            ExitCode::FAILURE
        }
    }
}
