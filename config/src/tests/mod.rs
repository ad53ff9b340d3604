//! Parse + validate tests against real files in a temporary directory.

mod examples;
mod parse;
mod robust;
mod validate;
mod volumes;
mod vsock;

use crate::{ConfigError, Problem};

/// A directory with a kernel, an initrd and share sources, and a config text that uses them.
pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub text: String,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("bzImage"), b"kernel").unwrap();
        std::fs::write(d.join("initrd"), b"initrd").unwrap();
        std::fs::create_dir(d.join("store")).unwrap();
        std::fs::create_dir(d.join("etc")).unwrap();
        let text = TEMPLATE.replace("DIR", d.to_str().unwrap());
        Fixture { dir, text }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// The text with `from` (which must occur exactly once) replaced by `to`.
    pub fn with(&self, from: &str, to: &str) -> String {
        edit(&self.text, from, to)
    }
}

pub(crate) fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
    text.replacen(from, to, 1)
}

pub(crate) const TEMPLATE: &str = r#"{
  "name": "vm1",
  "vcpus": 2,
  "memory_mib": 256,
  "hugepages": false,
  "kernel": {
    "path": "DIR/bzImage",
    "initrd": "DIR/initrd",
    "cmdline": "console=ttyS0 quiet"
  },
  "serial": {"file": "DIR/serial.log"},
  "boot_timer": true,
  "virtio_mmio_discovery": "acpi",
  "shutdown_grace_secs": 3,
  "rng": true,
  "network": [
    {"tap": "vm-vm1", "mac": "02:00:00:00:00:01", "bridge": "br-vm1", "address": "10.1.0.2/24", "gateway": "10.1.0.1"},
    {"tap": "vm-vm1b", "mac": "02:00:00:00:00:02"}
  ],
  "shares": [
    {"tag": "store", "source": "DIR/store", "read_only": true},
    {"tag": "etc", "source": "DIR/etc"}
  ],
  "control_socket": "DIR/vm1.sock",
  "storage": {"snapshot_on_start": true, "keep_snapshots": 3}
}
"#;

/// 1-based line and byte column of the only occurrence of `needle` in `text`.
pub(crate) fn pos(text: &str, needle: &str) -> (usize, usize) {
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} must occur once"
    );
    let off = text.find(needle).unwrap();
    let line_start = text[..off].rfind('\n').map_or(0, |n| n + 1);
    (text[..off].matches('\n').count() + 1, off - line_start + 1)
}

/// Parses with all checks and returns the problems (the parse must fail).
pub(crate) fn problems(text: &str) -> Vec<Problem> {
    match crate::parse(text, "vm1.json") {
        Ok(cfg) => panic!("expected problems, parsed {cfg:?}"),
        Err(e) => e.problems().to_vec(),
    }
}

/// Asserts exactly one problem, at `path`, positioned at `needle`, mentioning `words`.
pub(crate) fn assert_one(text: &str, path: &str, needle: &str, words: &str) {
    let ps = problems(text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_problem(&ps[0], text, path, needle, words);
}

pub(crate) fn assert_problem(p: &Problem, text: &str, path: &str, needle: &str, words: &str) {
    assert_eq!(p.path, path, "{p:?}");
    assert_eq!((p.line, p.column), pos(text, needle), "{p:?}");
    assert!(p.message.contains(words), "{:?} lacks {words:?}", p.message);
}

pub(crate) fn is_deserialize(e: &ConfigError) -> bool {
    matches!(e, ConfigError::Deserialize { .. })
}
