//! What a test asks the lab to do ([`Scenario`]) and what it gets back ([`LabOutcome`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::tail_lines;
use crate::LabError;

/// Prefix of report lines. Anything else on the console (kernel noise, tinyvmm logs) is
/// ignored by the parser. L1 reports `LAB key=value ...`; L2 reports `LAB l2.key=value ...`
/// (its `lab-report` adds the `l2.` prefix), and its lines reach L1's console through
/// tinyvmm's serial on stdout.
pub const REPORT_PREFIX: &str = "LAB ";

/// Default hard timeout of a scenario (L1 boot included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// A file placed into L1's initramfs.
#[derive(Debug, Clone)]
pub struct ScenarioFile {
    /// Absolute path inside L1.
    pub dest: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// One lab run: an L1 shell script, optionally an L2 script, extra files, a timeout.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub(crate) name: String,
    pub(crate) script: String,
    pub(crate) l2_script: Option<String>,
    pub(crate) files: Vec<ScenarioFile>,
    pub(crate) host_binaries: Vec<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) emulation_retries: u32,
    pub(crate) l1_cpus: u32,
}

impl Scenario {
    /// A scenario named `name` ([A-Za-z0-9_-]) whose L1 script does nothing yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            script: String::new(),
            l2_script: None,
            files: Vec::new(),
            host_binaries: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            emulation_retries: 0,
            l1_cpus: crate::lab::L1_CPUS,
        }
    }

    /// Gives L1 `n` vCPUs in fast mode (default [`L1_CPUS`](crate::lab::L1_CPUS); the
    /// deterministic mode always has 1). See README "Lab reliability" for why the default is
    /// not lower.
    pub fn l1_cpus(mut self, n: u32) -> Self {
        self.l1_cpus = n;
        self
    }

    /// Boots L1 again, up to `n` more times, when the emulated machine itself failed: the run
    /// hit its hard timeout, or L1's own kernel panicked. Nested SVM under multi-threaded TCG
    /// very rarely wedges or crashes L1 (seen about once in a hundred boots); each retry is
    /// announced on stderr. A scenario that ends with a status, whatever it is, is never
    /// retried, and a real hang still fails: every attempt times out.
    pub fn emulation_retries(mut self, n: u32) -> Self {
        self.emulation_retries = n;
        self
    }

    /// The busybox `sh` script run in L1 as /lab/scenario.sh; its exit status becomes
    /// [`LabOutcome::status`]. PATH starts with /lab/bin (release binaries, `lab-report`).
    pub fn script(mut self, l1_shell_script: &str) -> Self {
        self.script = l1_shell_script.to_string();
        self
    }

    /// The busybox `sh` script the L2 guest runs (as /scenario.sh in /lab/l2/initrd.gz) after
    /// loading its virtio modules; its status is reported as `l2.status`.
    pub fn l2_script(mut self, l2_shell_script: &str) -> Self {
        self.l2_script = Some(l2_shell_script.to_string());
        self
    }

    /// A file (mode 0644) at absolute path `dest` in L1.
    pub fn file(self, dest: &str, data: impl Into<Vec<u8>>) -> Self {
        self.file_with_mode(dest, data, 0o644)
    }

    /// An executable file (mode 0755) at absolute path `dest` in L1.
    pub fn executable(self, dest: &str, data: impl Into<Vec<u8>>) -> Self {
        self.file_with_mode(dest, data, 0o755)
    }

    fn file_with_mode(mut self, dest: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push(ScenarioFile {
            dest: dest.to_string(),
            data: data.into(),
            mode,
        });
        self
    }

    /// A host executable (e.g. /usr/sbin/nft) copied into L1 at the same path, with the
    /// shared libraries `ldd` lists for it.
    pub fn host_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.host_binaries.push(path.into());
        self
    }

    /// The hard timeout for the whole run, L1 boot included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn validate(&self) -> Result<(), LabError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(LabError::InvalidScenario(format!(
                "name {:?} must be 1..=64 chars of [A-Za-z0-9_-]",
                self.name
            )));
        }
        for f in &self.files {
            let bad = !f.dest.starts_with('/')
                || f.dest.ends_with('/')
                || f.dest.split('/').any(|c| c == ".." || c == ".");
            if bad {
                return Err(LabError::InvalidScenario(format!(
                    "file destination {:?} must be an absolute path without . or ..",
                    f.dest
                )));
            }
        }
        Ok(())
    }
}

/// The result of a scenario that ran to completion (any exit status).
#[derive(Debug, Clone)]
pub struct LabOutcome {
    /// Exit status of the L1 scenario script.
    pub status: i32,
    /// Every `key=value` pair from `LAB ` lines (later values win). Always present:
    /// `status`, `l1.init_uptime`, `l1.kvm`, `l1.clocksource`. From L2: `l2.init_uptime`, `l2.modules`, `l2.status`.
    pub kv: BTreeMap<String, String>,
    /// L1's whole console output.
    pub output: String,
    /// Wall time from QEMU start to QEMU exit.
    pub elapsed: Duration,
    /// Wall time from QEMU start to the L1 init's first report (L1 boot cost).
    pub boot_to_init: Option<Duration>,
    pub(crate) scenario: String,
}

impl LabOutcome {
    /// A reported value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(String::as_str)
    }

    /// For tests: panics, showing L1's whole console, unless `key` was reported as `want`.
    pub fn assert_kv(&self, key: &str, want: &str) {
        assert_eq!(
            self.get(key),
            Some(want),
            "{key}: wanted {want}\n--- L1 console ---\n{}",
            self.output
        );
    }

    /// `Ok(self)` if the scenario exited 0, else [`LabError::ScenarioFailed`] with its output.
    pub fn ensure_success(self) -> Result<Self, LabError> {
        if self.status == 0 {
            return Ok(self);
        }
        Err(LabError::ScenarioFailed {
            scenario: self.scenario,
            status: self.status,
            tail: tail_lines(&self.output, 40),
        })
    }
}

/// Parses one console line: `LAB k=v k2=v2` (leading whitespace and CR tolerated) into pairs.
/// Tokens without `=` or with an empty key are ignored; values cannot contain spaces.
pub fn parse_report_line(line: &str) -> Vec<(String, String)> {
    let line = line.trim_end_matches('\r').trim_start();
    let Some(rest) = line.strip_prefix(REPORT_PREFIX) else {
        return Vec::new();
    };
    rest.split_whitespace()
        .filter_map(|tok| tok.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_report_line_when_several_pairs_then_all_returned() {
        let kv = parse_report_line("LAB kvm_smoke=ok port=0x10 value=0x42\r");
        assert_eq!(
            kv,
            [("kvm_smoke", "ok"), ("port", "0x10"), ("value", "0x42")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn parse_report_line_when_kernel_noise_then_nothing() {
        assert!(
            parse_report_line("[    1.23] kvm: Unhandled WRMSR(0xc0010007) LAB x=1").is_empty()
        );
        assert!(parse_report_line("LABEL=foo").is_empty());
        assert!(parse_report_line("LAB =v novalue").is_empty());
    }

    #[test]
    fn validate_when_bad_name_or_relative_dest_then_invalid() {
        assert!(Scenario::new("ok-name_1").validate().is_ok());
        assert!(Scenario::new("bad name").validate().is_err());
        assert!(Scenario::new("x")
            .file("lab/vm.json", "{}")
            .validate()
            .is_err());
        assert!(Scenario::new("x")
            .file("/lab/../etc", "")
            .validate()
            .is_err());
        assert!(Scenario::new("x")
            .file("/lab/vm.json", "{}")
            .validate()
            .is_ok());
    }

    #[test]
    fn ensure_success_when_nonzero_then_error_carries_output() {
        let outcome = LabOutcome {
            status: 3,
            kv: BTreeMap::new(),
            output: "boot\nscenario said why\n".into(),
            elapsed: Duration::ZERO,
            boot_to_init: None,
            scenario: "s".into(),
        };
        let msg = outcome.ensure_success().unwrap_err().to_string();
        assert!(
            msg.contains("status 3") && msg.contains("scenario said why"),
            "{msg}"
        );
    }
}
