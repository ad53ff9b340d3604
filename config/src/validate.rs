//! Cross-field validation: one pass over a [`VmConfig`] that reports every problem.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;

use crate::error::Problem;
use crate::types::{NetConfig, SerialConfig, ShareConfig, VmConfig, VolumeConfig};

/// Longest VM name (it names the lock file, the socket and host interfaces).
pub const MAX_NAME_LEN: usize = 32;
pub const MAX_VCPUS: u32 = 32;
pub const MIN_MEMORY_MIB: u64 = 16;
/// 1 TiB.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Linux IFNAMSIZ minus the NUL.
pub const MAX_IFNAME_LEN: usize = 15;
/// The virtio-fs config space holds a 36-byte tag.
pub const MAX_TAG_LEN: usize = 36;
/// The virtio-blk GET_ID answer is 20 bytes.
pub const MAX_SERIAL_LEN: usize = 20;
/// GSIs 10..=23 (see the guest layout in arch).
pub const MAX_VIRTIO_DEVICES: usize = 14;
/// Linux x86 COMMAND_LINE_SIZE includes the NUL.
pub const MAX_CMDLINE_LEN: usize = 2047;
/// `sockaddr_un.sun_path` is 108 bytes including the NUL.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// Which checks to run. netctl and storage run where the kernel and share sources may not exist,
/// so they switch the file-system checks off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// Check that kernel, initrd, share sources and parent directories exist.
    pub files: bool,
}

impl Checks {
    pub const ALL: Checks = Checks { files: true };
    pub const NO_FILES: Checks = Checks { files: false };
}

impl Default for Checks {
    fn default() -> Self {
        Checks::ALL
    }
}

/// Every problem with `cfg`, file checks included. Positions are 0 (no source text); use
/// [`crate::parse()`] to get them filled in.
pub fn validate(cfg: &VmConfig) -> Vec<Problem> {
    validate_with(cfg, Checks::ALL)
}

/// Every problem with `cfg`, running only the `checks` asked for.
pub fn validate_with(cfg: &VmConfig, checks: Checks) -> Vec<Problem> {
    let mut v = Validator {
        checks,
        problems: Vec::new(),
    };
    v.report("name", check_name(&cfg.name));
    v.resources(cfg);
    v.kernel(cfg);
    v.serial(&cfg.serial);
    v.network(&cfg.network);
    v.shares(&cfg.shares);
    v.volumes(&cfg.volumes);
    v.control_socket(cfg.control_socket.as_deref());
    v.device_count(cfg);
    v.problems
}

/// A VM name: `[a-z0-9-]`, 1..=32 bytes, not starting with `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be 1..={MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        return Err(format!("may only contain a-z, 0-9 and '-', found {c:?}"));
    }
    if name.starts_with('-') {
        return Err("must not start with '-'".to_string());
    }
    Ok(())
}

/// A virtio-blk serial: at most 20 bytes of printable ASCII (the guest shows it in sysfs).
pub fn check_serial(serial: &str) -> Result<(), String> {
    if serial.len() > MAX_SERIAL_LEN {
        return Err(format!(
            "must be at most {MAX_SERIAL_LEN} bytes, got {}",
            serial.len()
        ));
    }
    if let Some(c) = serial.chars().find(|c| !c.is_ascii_graphic() && *c != ' ') {
        return Err(format!("may only contain printable ASCII, found {c:?}"));
    }
    Ok(())
}

/// A Linux network interface name: 1..=15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "interface name must be 1..={MAX_IFNAME_LEN} bytes, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("interface name may not contain {c:?}"));
    }
    Ok(())
}

struct Validator {
    checks: Checks,
    problems: Vec<Problem>,
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn report(&mut self, path: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.push(path, message);
        }
    }

    fn resources(&mut self, cfg: &VmConfig) {
        if !(1..=MAX_VCPUS).contains(&cfg.vcpus) {
            self.push(
                "vcpus",
                format!("must be 1..={MAX_VCPUS}, got {}", cfg.vcpus),
            );
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&cfg.memory_mib) {
            self.push(
                "memory_mib",
                format!(
                    "must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB, got {}",
                    cfg.memory_mib
                ),
            );
        } else if cfg.hugepages && cfg.memory_mib & 1 == 1 {
            self.push(
                "memory_mib",
                format!(
                    "must be a multiple of 2 MiB with hugepages, got {}",
                    cfg.memory_mib
                ),
            );
        }
    }

    fn kernel(&mut self, cfg: &VmConfig) {
        let k = &cfg.kernel;
        self.regular_file("kernel.path", &k.path);
        if let Some(initrd) = &k.initrd {
            self.regular_file("kernel.initrd", initrd);
        }
        if k.cmdline.len() > MAX_CMDLINE_LEN {
            self.push(
                "kernel.cmdline",
                format!(
                    "is {} bytes, the limit is {MAX_CMDLINE_LEN}",
                    k.cmdline.len()
                ),
            );
        }
        if k.cmdline.contains('\0') {
            self.push("kernel.cmdline", "must not contain NUL");
        }
    }

    fn serial(&mut self, serial: &SerialConfig) {
        if let SerialConfig::File(path) = serial {
            self.parent_dir("serial.file", path);
        }
    }

    fn network(&mut self, nets: &[NetConfig]) {
        let mut taps = Seen::new("network", "tap");
        let mut macs = Seen::new("network", "mac");
        for (i, net) in nets.iter().enumerate() {
            let at = |field: &str| format!("network[{i}].{field}");
            self.report(at("tap"), check_ifname(&net.tap));
            self.report(at("tap"), taps.check(net.tap.as_str(), i));
            if net.mac.is_zero() {
                self.push(at("mac"), "must not be all zeros");
            } else if net.mac.is_multicast() {
                self.push(
                    at("mac"),
                    format!(
                        "{} is a multicast address (bit 0 of the first octet is set)",
                        net.mac
                    ),
                );
            }
            self.report(at("mac"), macs.check(net.mac, i));
            if net.transient && net.bridge.is_some() {
                self.push(
                    at("transient"),
                    "a transient TAP is on no bridge; netctl makes the TAP of a bridged entry",
                );
            }
            if let Some(bridge) = &net.bridge {
                self.report(at("bridge"), check_ifname(bridge));
                if nets.iter().any(|n| &n.tap == bridge) {
                    self.push(
                        at("bridge"),
                        format!("{bridge:?} is also used as a tap name"),
                    );
                }
            }
            self.ip(i, net);
        }
    }

    fn ip(&mut self, i: usize, net: &NetConfig) {
        let at = |field: &str| format!("network[{i}].{field}");
        if let Some(cidr) = net.address {
            if !(1..=30).contains(&cidr.prefix) {
                self.push(
                    at("address"),
                    format!("prefix length must be 1..=30, got /{}", cidr.prefix),
                );
            } else if cidr.addr == cidr.network() || cidr.addr == cidr.broadcast() {
                self.push(
                    at("address"),
                    format!("{} is the network or broadcast address of its subnet", cidr),
                );
            }
        }
        let Some(gw) = net.gateway else { return };
        let Some(cidr) = net.address else {
            self.push(at("gateway"), "needs an address to define the subnet");
            return;
        };
        if gw == cidr.addr {
            self.push(at("gateway"), format!("{gw} is the VM's own address"));
        } else if !cidr.contains(gw) {
            self.push(
                at("gateway"),
                format!(
                    "{gw} is outside the subnet {}/{}",
                    cidr.network(),
                    cidr.prefix
                ),
            );
        } else if (1..=30).contains(&cidr.prefix)
            && (gw == cidr.network() || gw == cidr.broadcast())
        {
            self.push(
                at("gateway"),
                format!("{gw} is the network or broadcast address of its subnet"),
            );
        }
    }

    fn shares(&mut self, shares: &[ShareConfig]) {
        let mut tags = Seen::new("shares", "tag");
        for (i, share) in shares.iter().enumerate() {
            let at = |field: &str| format!("shares[{i}].{field}");
            if share.tag.is_empty() || share.tag.len() > MAX_TAG_LEN {
                self.push(
                    at("tag"),
                    format!("must be 1..={MAX_TAG_LEN} bytes, got {}", share.tag.len()),
                );
            } else if share.tag.contains('\0') {
                self.push(at("tag"), "must not contain NUL");
            }
            self.report(at("tag"), tags.check(share.tag.as_str(), i));
            match (&share.source, &share.socket) {
                (Some(_), Some(_)) => self.push(
                    at("socket"),
                    "give either source (served by tinyvmm) or socket (an external \
                     vhost-user-fs backend), not both",
                ),
                (None, None) => self.push(
                    at("source"),
                    "missing: give source (a host directory) or socket (an external \
                     vhost-user-fs backend)",
                ),
                (Some(source), None) => self.directory(&at("source"), source),
                (None, Some(socket)) => {
                    self.socket_path(&at("socket"), socket);
                    if share.read_only {
                        self.push(
                            at("read_only"),
                            "applies to source shares only; an external backend decides \
                             (e.g. virtiofsd --readonly)",
                        );
                    }
                }
            }
        }
    }

    fn volumes(&mut self, volumes: &[VolumeConfig]) {
        let mut paths = Seen::new("volumes", "path");
        for (i, vol) in volumes.iter().enumerate() {
            let at = |field: &str| format!("volumes[{i}].{field}");
            self.report(at("path"), paths.check(vol.path.display().to_string(), i));
            self.disk(&at("path"), &vol.path);
            if let Some(serial) = &vol.serial {
                self.report(at("serial"), check_serial(serial));
            }
        }
    }

    fn control_socket(&mut self, socket: Option<&Path>) {
        let Some(socket) = socket else { return };
        self.socket_path("control_socket", socket);
    }

    /// A unix socket path: short enough for `sun_path`, in an existing directory.
    fn socket_path(&mut self, at: &str, socket: &Path) {
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH_LEN {
            self.push(
                at,
                format!("is {len} bytes, a unix socket path holds at most {MAX_SOCKET_PATH_LEN}"),
            );
        }
        self.parent_dir(at, socket);
    }

    fn device_count(&mut self, cfg: &VmConfig) {
        let count = cfg.virtio_device_count();
        if count <= MAX_VIRTIO_DEVICES {
            return;
        }
        let path = if !cfg.volumes.is_empty() {
            "volumes"
        } else if !cfg.shares.is_empty() {
            "shares"
        } else {
            "network"
        };
        self.push(
            path,
            format!(
                "{count} virtio devices (rng {} + network {} + shares {}{}), at most {MAX_VIRTIO_DEVICES}",
                usize::from(cfg.rng),
                cfg.network.len(),
                cfg.shares.len(),
                match cfg.volumes.len() {
                    0 => String::new(),
                    n => format!(" + volumes {n}"),
                }
            ),
        );
    }

    fn non_empty(&mut self, path: &str, p: &Path) -> bool {
        if p.as_os_str().is_empty() {
            self.push(path, "must not be empty");
            return false;
        }
        true
    }

    fn regular_file(&mut self, path: &str, p: &Path) {
        if !self.non_empty(path, p) || !self.checks.files {
            return;
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.push(path, format!("{} is not a regular file", p.display())),
            Err(e) => self.push(path, format!("{}: {e}", p.display())),
        }
    }

    /// A disk image: a regular file or a block device.
    fn disk(&mut self, path: &str, p: &Path) {
        use std::os::unix::fs::FileTypeExt;
        if !self.non_empty(path, p) || !self.checks.files {
            return;
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() || m.file_type().is_block_device() => {}
            Ok(_) => self.push(
                path,
                format!(
                    "{} is neither a regular file nor a block device",
                    p.display()
                ),
            ),
            Err(e) => self.push(path, format!("{}: {e}", p.display())),
        }
    }

    fn directory(&mut self, path: &str, p: &Path) {
        if !self.non_empty(path, p) || !self.checks.files {
            return;
        }
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => self.push(path, format!("{} is not a directory", p.display())),
            Err(e) => self.push(path, format!("{}: {e}", p.display())),
        }
    }

    /// The directory that will hold a file we create (log, socket) must exist.
    fn parent_dir(&mut self, path: &str, p: &Path) {
        if !self.non_empty(path, p) || !self.checks.files {
            return;
        }
        let parent = match p.parent() {
            Some(d) if d.as_os_str().is_empty() => Path::new("."),
            Some(d) => d,
            None => {
                self.push(path, format!("{} has no parent directory", p.display()));
                return;
            }
        };
        match std::fs::metadata(parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => self.push(path, format!("{} is not a directory", parent.display())),
            Err(e) => self.push(path, format!("parent directory {}: {e}", parent.display())),
        }
    }
}

/// Values seen so far in one list field, to report duplicates.
struct Seen<K> {
    list: &'static str,
    field: &'static str,
    first: HashMap<K, usize>,
}

impl<K: Eq + Hash + std::fmt::Display> Seen<K> {
    fn new(list: &'static str, field: &'static str) -> Self {
        Seen {
            list,
            field,
            first: HashMap::new(),
        }
    }

    /// Records `key` at `index`; the later one of a duplicate pair is the error.
    fn check(&mut self, key: K, index: usize) -> Result<(), String> {
        if let Some(first) = self.first.get(&key) {
            let (list, field) = (self.list, self.field);
            return Err(format!(
                "duplicate {field} {key}, also used by {list}[{first}]"
            ));
        }
        self.first.insert(key, index);
        Ok(())
    }
}
