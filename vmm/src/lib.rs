//! tinyvmm: a purpose-built KVM VMM that boots Linux kernels directly.
//!
//! The VMM only takes typed config (from the `vmconfig` crate); host plumbing (bridges, NAT,
//! datasets) arrives as names and paths. Modules, in the order a run uses them:
//! [`cli`] (the commands) → [`builder`] (config to a built VM, step by step, with device steps in
//! [`attach`]) → [`run`] (vCPU threads from [`vcpu`] plus the event loop and [`control`]) →
//! [`exit_code`].

pub mod api;
pub mod attach;
pub mod builder;
pub mod cli;
pub mod commands;
pub mod control;
pub mod exit_code;
pub mod fs_server;
pub mod logger;
pub mod notify;
pub mod pause;
pub mod run;
pub mod systemd;
pub mod terminal;
pub mod timing;
pub mod vcpu;
pub mod virtiofsd;
