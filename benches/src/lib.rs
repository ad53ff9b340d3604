//! Support for the benchmarks and for fast tests that run on this machine's own KVM: tiny
//! freestanding guests assembled from `benches/guests/*.S`.
//!
//! Each guest is an ELF64 executable linked at 1 MiB whose entry point runs in the 64-bit
//! state the VMM sets up for the Linux boot protocol. They are built with the system `as` and
//! `ld` (binutils) at test time into a directory the caller owns.

pub mod measure;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guests in `benches/guests`, by file stem.
pub const GUESTS: &[&str] = &[
    "poweroff",
    "reset",
    "i8042_reset",
    "triple_fault",
    "boot_timer",
    "spin",
    "pvh_poweroff",
    "serial_hello",
    "serial_echo",
    "pvpanic",
    "mmio_flood",
];

/// Errors assembling a guest.
#[derive(Debug)]
pub struct GuestBuildError(pub String);

impl std::fmt::Display for GuestBuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "build test guest: {} (needs binutils: apt-get install binutils)",
            self.0
        )
    }
}

impl std::error::Error for GuestBuildError {}

/// Assembles and links guest `name` into `out_dir`, returning the ELF's path.
pub fn build_guest(name: &str, out_dir: &Path) -> Result<PathBuf, GuestBuildError> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guests")
        .join(format!("{name}.S"));
    let obj = out_dir.join(format!("{name}.o"));
    let elf = out_dir.join(format!("{name}.elf"));
    run(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src))?;
    run(Command::new("ld")
        .args([
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-z",
            "noexecstack",
        ])
        .arg("-T")
        .arg(src.with_file_name("guest.ld"))
        .args(["-e", entry_symbol(name), "-o"])
        .arg(&elf)
        .arg(&obj))?;
    Ok(elf)
}

/// PVH guests start in 32-bit code at `_start32`; the others at `_start`.
fn entry_symbol(name: &str) -> &'static str {
    if name.starts_with("pvh_") {
        "_start32"
    } else {
        "_start"
    }
}

fn run(cmd: &mut Command) -> Result<(), GuestBuildError> {
    let out = cmd
        .output()
        .map_err(|e| GuestBuildError(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(GuestBuildError(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_guest_when_all_built_then_elf64_at_one_mib() {
        let dir = tempfile::tempdir().unwrap();
        for name in GUESTS {
            let elf = build_guest(name, dir.path()).unwrap();
            let bytes = std::fs::read(&elf).unwrap();
            assert_eq!(&bytes[..4], b"\x7fELF", "{name}");
            assert_eq!(bytes[4], 2, "{name} is not ELF64");
            let entry = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
            assert_eq!(entry, 0x100000, "{name} entry");
        }
    }
}
