//! Errors of every netctl step. Variants are named after the failed operation.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in netctl.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("parsing {path}: {msg}")]
    ParseConfig { path: PathBuf, msg: String },
    #[error("invalid network configuration:\n  {}", .0.join("\n  "))]
    Validate(Vec<String>),
    #[error("invalid host settings: {0}")]
    HostSettings(String),
    #[error("no uplink: {0}")]
    FindUplink(String),
    #[error(
        "netctl needs CAP_NET_ADMIN in this network namespace (run as root); nothing was changed"
    )]
    CheckCapNetAdmin,
    #[error("the `nft` binary was not found in PATH (install the `nftables` package); nothing was changed")]
    FindNft,
    #[error("running nft: {0}")]
    SpawnNft(io::Error),
    #[error("nft rejected the generated ruleset (nothing was changed): {0}")]
    CheckRuleset(String),
    #[error("nft failed to load the ruleset: {0}")]
    LoadRuleset(String),
    #[error("nft failed to list {what}: {msg}")]
    ListRuleset { what: String, msg: String },
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    #[error("netlink connection: {0}")]
    NetlinkConnect(io::Error),
    #[error("creating TAP {name}: {source}")]
    CreateTap { name: String, source: io::Error },
    #[error("{name} exists but is {found}, not {wanted}; remove or rename it first")]
    LinkConflict {
        name: String,
        found: String,
        wanted: String,
    },
    #[error(
        "bridge {bridge} already has other ports ({ports}); the VM's TAP must be its only port"
    )]
    BridgeShared { bridge: String, ports: String },
    #[error("refusing to remove the network of running VM(s) {}: stop them first or pass --force", .0.join(", "))]
    VmRunning(Vec<String>),
    #[error("checking whether a VM runs: {0}")]
    CheckRunning(vmconfig::LockError),
    #[error("sysctl {key}: {source}")]
    Sysctl { key: String, source: io::Error },
    #[error("state file {path}: {msg}")]
    State { path: PathBuf, msg: String },
    #[error("reading the current network namespace: {0}")]
    NetnsId(io::Error),
    #[error("refusing to run: NETCTL_TEST_NETNS={expected} but this is not that namespace")]
    WrongNetns { expected: String },
    #[error("injected failure at step {0} (NETCTL_FAIL_AT)")]
    Injected(String),
    #[error("apply failed: {cause}; rolled back to the previous state")]
    RolledBack { cause: Box<Error> },
    #[error("apply failed: {cause}; rollback also failed: {rollback}")]
    Rollback {
        cause: Box<Error>,
        rollback: Box<Error>,
    },
    #[error("`tailscale` was not found in PATH: install Tailscale or run without --apply")]
    FindTailscale,
    #[error("tailscale set --advertise-routes failed: {0}")]
    RunTailscale(String),
}

impl Error {
    /// The exit status of the shared contract ([`vmconfig::exit::Status`]) for this error.
    pub fn exit_status(&self) -> vmconfig::exit::Status {
        use vmconfig::exit::Status;
        match self {
            Error::ReadConfig { .. }
            | Error::ParseConfig { .. }
            | Error::Validate(_)
            | Error::HostSettings(_) => Status::Invalid,
            Error::VmRunning(_) => Status::Refused,
            Error::RolledBack { cause } => cause.exit_status(),
            _ => Status::Failed,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
