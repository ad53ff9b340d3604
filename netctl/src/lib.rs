//! netctl: per-VM isolated networks for tinyvmm, declared by the VM config files.
//!
//! Each VM network entry with a `bridge` gets a bridge holding the gateway address, one
//! persistent TAP (owned by the configured user, vnet_hdr) attached to it, NAT out the
//! uplink, and nftables rules (tables `inet tinyvmm` and `bridge tinyvmm`, replaced
//! atomically) that keep VMs apart and stop spoofing. See README.md.

pub mod error;
pub mod host;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod ops;
pub mod plan;
pub mod report;
pub mod ruleset;
pub mod source;
pub mod state;
pub mod sys;
pub mod tap;

pub use error::{Error, Result};
