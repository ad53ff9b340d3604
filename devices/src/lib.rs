//! Device models for tinyvmm.
//!
//! Devices never depend on the VMM: each is a pure model (registers, config space, queue
//! processing) that is generic over guest memory and signals the guest through the
//! [`interrupt::Interrupt`] trait, plus thin event glue. Everything here is testable without
//! `/dev/kvm`.

pub mod bus;
pub mod exit;
pub mod interrupt;
pub mod legacy;
pub mod ratelimit;
pub mod virtio;
