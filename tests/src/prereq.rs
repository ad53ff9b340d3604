//! Detects missing host tools and turns them into one `apt-get install` line.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use crate::LabError;

/// A command the lab runs on the host, and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// Executable name looked up in PATH.
    pub command: &'static str,
    /// Debian package that ships it.
    pub package: &'static str,
    /// If set, this package must also be installed (e.g. busybox-static rather than the
    /// dynamically linked busybox, which also ships `busybox`).
    pub must_be_package: bool,
}

/// Everything the lab needs on the host. `.ci/lab-packages.txt` lists the packages.
pub const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        command: "qemu-system-x86_64",
        package: "qemu-system-x86",
        must_be_package: false,
    },
    Requirement {
        command: "busybox",
        package: "busybox-static",
        must_be_package: true,
    },
    Requirement {
        command: "depmod",
        package: "kmod",
        must_be_package: false,
    },
    Requirement {
        command: "gzip",
        package: "gzip",
        must_be_package: false,
    },
    Requirement {
        command: "ldd",
        package: "libc-bin",
        must_be_package: false,
    },
    Requirement {
        command: "apt-get",
        package: "apt",
        must_be_package: false,
    },
    Requirement {
        command: "apt-cache",
        package: "apt",
        must_be_package: false,
    },
    Requirement {
        command: "dpkg-deb",
        package: "dpkg",
        must_be_package: false,
    },
];

/// What the detection needs to know about the host; faked in tests.
pub trait HostProbe {
    /// The full path of `command` if it is an executable in the search path.
    fn find_command(&self, command: &str) -> Option<PathBuf>;
    /// Whether dpkg says `package` is installed.
    fn package_installed(&self, package: &str) -> bool;
}

/// The real host: PATH (plus the sbin directories, where depmod lives) and dpkg-query.
#[derive(Debug, Clone)]
pub struct SystemProbe {
    search_path: OsString,
}

impl SystemProbe {
    /// A probe over `$PATH` extended with /usr/sbin and /sbin.
    pub fn new() -> Self {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for extra in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
            if !dirs.iter().any(|d| d.as_os_str() == extra) {
                dirs.push(PathBuf::from(extra));
            }
        }
        Self::with_path(std::env::join_paths(dirs).unwrap_or_default())
    }

    /// A probe over an explicit search path.
    pub fn with_path(search_path: OsString) -> Self {
        Self { search_path }
    }
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self::new()
    }
}

/// Looks `command` up in a PATH-style list of directories.
pub fn find_in_path(search_path: &OsString, command: &str) -> Option<PathBuf> {
    std::env::split_paths(search_path)
        .map(|dir| dir.join(command))
        .find(|candidate| {
            candidate
                .metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

impl HostProbe for SystemProbe {
    fn find_command(&self, command: &str) -> Option<PathBuf> {
        find_in_path(&self.search_path, command)
    }

    fn package_installed(&self, package: &str) -> bool {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .map(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed")
            })
            .unwrap_or(false)
    }
}

/// Checks every requirement and reports all missing ones in a single line with the fix.
pub fn check(probe: &dyn HostProbe, requirements: &[Requirement]) -> Result<(), LabError> {
    let mut missing = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    for req in requirements {
        let found = probe.find_command(req.command).is_some()
            && (!req.must_be_package || probe.package_installed(req.package));
        if !found {
            missing.push(if req.must_be_package {
                format!("{} (package {})", req.command, req.package)
            } else {
                req.command.to_string()
            });
            if !packages.contains(&req.package) {
                packages.push(req.package);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(LabError::MissingPrerequisites {
        missing: missing.join(", "),
        fix: format!(
            "apt-get update && apt-get install -y {}",
            packages.join(" ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::fs;

    struct FakeProbe {
        path: OsString,
        installed: HashSet<&'static str>,
    }

    impl HostProbe for FakeProbe {
        fn find_command(&self, command: &str) -> Option<PathBuf> {
            find_in_path(&self.path, command)
        }
        fn package_installed(&self, package: &str) -> bool {
            self.installed.contains(package)
        }
    }

    fn fake_bin_dir(commands: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for c in commands {
            let p = dir.path().join(c);
            fs::write(&p, "#!/bin/sh\n").expect("write fake command");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        dir
    }

    fn all_commands() -> Vec<&'static str> {
        REQUIREMENTS.iter().map(|r| r.command).collect()
    }

    #[test]
    fn check_when_everything_present_then_ok() {
        let dir = fake_bin_dir(&all_commands());
        let probe = FakeProbe {
            path: dir.path().as_os_str().to_owned(),
            installed: HashSet::from(["busybox-static"]),
        };
        check(&probe, REQUIREMENTS).expect("all present");
    }

    #[test]
    fn check_when_qemu_missing_then_one_line_apt_hint() {
        let cmds: Vec<_> = all_commands()
            .into_iter()
            .filter(|c| *c != "qemu-system-x86_64")
            .collect();
        let dir = fake_bin_dir(&cmds);
        let probe = FakeProbe {
            path: dir.path().as_os_str().to_owned(),
            installed: HashSet::from(["busybox-static"]),
        };
        let msg = check(&probe, REQUIREMENTS)
            .expect_err("qemu missing")
            .to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(msg.contains("qemu-system-x86_64"), "{msg}");
        assert!(
            msg.ends_with("apt-get update && apt-get install -y qemu-system-x86"),
            "{msg}"
        );
    }

    #[test]
    fn check_when_dynamic_busybox_only_then_asks_for_busybox_static() {
        let dir = fake_bin_dir(&all_commands());
        let probe = FakeProbe {
            path: dir.path().as_os_str().to_owned(),
            installed: HashSet::from(["busybox"]),
        };
        let msg = check(&probe, REQUIREMENTS)
            .expect_err("static busybox missing")
            .to_string();
        assert!(msg.contains("busybox (package busybox-static)"), "{msg}");
        assert!(msg.ends_with("apt-get install -y busybox-static"), "{msg}");
    }

    #[test]
    fn check_when_several_missing_then_each_package_listed_once() {
        let dir = fake_bin_dir(&["gzip", "ldd", "dpkg-deb"]);
        let probe = FakeProbe {
            path: dir.path().as_os_str().to_owned(),
            installed: HashSet::new(),
        };
        let msg = check(&probe, REQUIREMENTS)
            .expect_err("many missing")
            .to_string();
        assert!(
            msg.ends_with("apt-get install -y qemu-system-x86 busybox-static kmod apt"),
            "{msg}"
        );
    }

    #[test]
    fn find_in_path_when_file_not_executable_then_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("depmod"), "").expect("write");
        let path = dir.path().as_os_str().to_owned();
        assert_eq!(find_in_path(&path, "depmod"), None);
    }
}
