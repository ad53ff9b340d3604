//! Drives the `nft` binary: check and load scripts in one transaction, read back our tables.
//!
//! Why the binary with a text script (and not the `nftables` crate's JSON or rustables):
//! the `nftables` crate also just pipes JSON into this same binary, and rustables needs
//! libclang at build time. A text script is what `plan` prints, so what the user reviews is
//! byte for byte what gets loaded, and `nft -f` runs the whole script as one atomic
//! transaction.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::ruleset::{COMMENT_PREFIX, TABLE};

/// Finds `nft` in PATH.
pub fn find() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
        .ok_or(Error::FindNft)
}

fn run_script(nft: &PathBuf, args: &[&str], script: &str) -> std::result::Result<(), String> {
    let mut child = Command::new(nft)
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `nft -c -f -`: parses and validates against the kernel without committing.
pub fn check(nft: &PathBuf, script: &str) -> Result<()> {
    run_script(nft, &["-c"], script).map_err(Error::CheckRuleset)
}

/// `nft -f -`: one transaction; on error nothing of it is committed.
pub fn load(nft: &PathBuf, script: &str) -> Result<()> {
    run_script(nft, &[], script).map_err(Error::LoadRuleset)
}

fn list(nft: &PathBuf, args: &[&str]) -> Result<Option<String>> {
    let out = Command::new(nft)
        .args(args)
        .output()
        .map_err(Error::SpawnNft)?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        return Ok(None);
    }
    Err(Error::ListRuleset {
        what: args.join(" "),
        msg: err.trim().to_string(),
    })
}

/// What the kernel holds of our tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Installed {
    pub inet: bool,
    pub bridge: bool,
    /// The fingerprint in the inet table's comment, if present.
    pub fingerprint: Option<String>,
    /// A digest of both tables' full content as the kernel reports it (JSON, handles
    /// removed): catches rules or set elements changed behind netctl's back.
    pub digest: Option<String>,
}

/// Drops what differs between identical rulesets: handles and the metainfo object.
fn canonical(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("handle");
            m.values_mut().for_each(canonical);
        }
        serde_json::Value::Array(a) => {
            a.retain(|x| x.get("metainfo").is_none());
            a.iter_mut().for_each(canonical);
        }
        _ => {}
    }
}

fn digest(nft: &PathBuf) -> Result<Option<String>> {
    let mut all = String::new();
    for fam in ["inet", "bridge"] {
        let Some(text) = list(nft, &["-j", "list", "table", fam, TABLE])? else {
            return Ok(None);
        };
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::ListRuleset {
                what: format!("table {fam} {TABLE} (JSON)"),
                msg: e.to_string(),
            })?;
        canonical(&mut v);
        all.push_str(&v.to_string());
    }
    Ok(Some(crate::ruleset::fingerprint(&all)))
}

/// Reads our two tables' presence and the fingerprint comment.
pub fn installed(nft: &PathBuf) -> Result<Installed> {
    let tables = list(nft, &["list", "tables"])?.unwrap_or_default();
    let inet = tables
        .lines()
        .any(|l| l.trim() == format!("table inet {TABLE}"));
    let bridge = tables
        .lines()
        .any(|l| l.trim() == format!("table bridge {TABLE}"));
    let mut fingerprint = None;
    if inet {
        // `-t` (terse) omits set elements, so this stays cheap for many VMs.
        let text = list(nft, &["-t", "list", "table", "inet", TABLE])?.unwrap_or_default();
        fingerprint = text.lines().find_map(|l| {
            let l = l.trim().strip_prefix("comment \"")?.strip_suffix('"')?;
            l.strip_prefix(COMMENT_PREFIX).map(str::to_string)
        });
    }
    let digest = if inet && bridge { digest(nft)? } else { None };
    Ok(Installed {
        inet,
        bridge,
        fingerprint,
        digest,
    })
}
