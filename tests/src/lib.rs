//! The tinyvmm lab: boots real kernels under a real, hardware-style KVM from `cargo test`.
//!
//! Our machines' /dev/kvm is PVM and boots no stock kernel, so every claim tinyvmm makes is
//! proven here instead: QEMU (TCG) emulates an AMD CPU with SVM (L1, Debian cloud kernel +
//! busybox initramfs); inside it kvm-amd provides /dev/kvm, and tinyvmm boots the same Debian
//! kernel as the L2 guest. See "The lab" in the top-level README.md.
//!
//! ```no_run
//! use lab::{Lab, Mode, Scenario};
//! use std::time::Duration;
//!
//! let lab = Lab::new(Mode::Fast)?;
//! let outcome = lab.run(
//!     &Scenario::new("smoke")
//!         .script("echo \"LAB $(kvm-smoke)\"")
//!         .timeout(Duration::from_secs(120)),
//! )?;
//! assert_eq!(outcome.get("kvm_smoke"), Some("ok"));
//! # Ok::<(), lab::LabError>(())
//! ```

pub mod cmdline_mmio;
pub mod cpio;
pub mod debian;
mod error;
pub mod image;
mod lab;
pub mod paths;
pub mod prereq;
mod runner;
mod scenario;
pub mod transfer;
pub mod virtiofs;

pub use error::LabError;
pub use image::{l2_vm_config_json, BaseImages, L1_CMDLINE, L2_CMDLINE};
pub use lab::{
    parse_ldd, release_executables, shared_libraries, Lab, L1_MEMORY_MIB, REQUIRED_BINARIES,
};
pub use runner::{Mode, QEMU};
pub use scenario::{
    parse_report_line, LabOutcome, Scenario, ScenarioFile, DEFAULT_TIMEOUT, REPORT_PREFIX,
};
