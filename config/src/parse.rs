//! Text -> [`VmConfig`]: deserialize, validate, and put line:column on every problem.

use std::path::Path;

use crate::error::{ConfigError, Problem};
use crate::position::{join_key, Pos, PositionIndex};
use crate::types::VmConfig;
use crate::validate::{validate_with, Checks};

/// Reads, parses and fully validates a config file (file-system checks included).
pub fn load(path: impl AsRef<Path>) -> Result<VmConfig, ConfigError> {
    load_with(path, Checks::ALL)
}

/// Reads, parses and validates a config file with the given checks.
pub fn load_with(path: impl AsRef<Path>, checks: Checks) -> Result<VmConfig, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_with(&text, &path.display().to_string(), checks)
}

/// Parses and fully validates config text; `origin` names it in messages (e.g. `vm1.json`).
pub fn parse(text: &str, origin: &str) -> Result<VmConfig, ConfigError> {
    parse_with(text, origin, Checks::ALL)
}

/// Parses and validates without touching the file system (for netctl and storage, which may
/// run where the kernel and share sources do not exist).
pub fn parse_unchecked(text: &str, origin: &str) -> Result<VmConfig, ConfigError> {
    parse_with(text, origin, Checks::NO_FILES)
}

/// Parses and validates config text with the given checks.
pub fn parse_with(text: &str, origin: &str, checks: Checks) -> Result<VmConfig, ConfigError> {
    let cfg = deserialize(text, origin)?;
    let mut problems = validate_with(&cfg, checks);
    if problems.is_empty() {
        return Ok(cfg);
    }
    let index = PositionIndex::build(text);
    for p in &mut problems {
        let pos = index.locate(&p.path);
        p.line = pos.line;
        p.column = pos.column;
    }
    Err(ConfigError::Validate {
        origin: origin.to_string(),
        problems,
    })
}

/// Only the serde step: syntax and shape, no cross-field validation.
pub fn deserialize(text: &str, origin: &str) -> Result<VmConfig, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Deserialize {
        origin: origin.to_string(),
        problem: problem_from_serde(text, &e),
    })
}

/// Turns a serde_json error into a problem with a JSON path.
///
/// serde_json knows the line and column where it stopped but not the path; the position index
/// maps that spot back to the innermost member or element, and then to the start of its value
/// (or of its key, for an unknown field).
fn problem_from_serde(text: &str, e: &serde_json::Error) -> Problem {
    let index = PositionIndex::build(text);
    let at = Pos {
        line: e.line(),
        column: e.column(),
    };
    let message = strip_position(&e.to_string());
    // A missing field is reported at the closing brace, which must not be taken for the end
    // of the object's last member.
    let missing = quoted_after(&message, "missing field ");
    let entry = index.innermost_at(index.offset_of(at), missing.is_none());
    let path = entry.map(|en| en.path.clone()).unwrap_or_default();
    let syntax = !matches!(e.classify(), serde_json::error::Category::Data);
    let (path, pos) = match entry {
        Some(en) if !syntax => {
            if let Some(field) = missing {
                (join_key(&path, field), index.pos_of(en.value_start))
            } else if message.starts_with("unknown field ")
                || message.starts_with("duplicate field ")
            {
                (path, index.pos_of(en.key_start.unwrap_or(en.value_start)))
            } else {
                (path, index.pos_of(en.value_start))
            }
        }
        // Where serde stopped is the best spot for a syntax error.
        _ => (path, clamp(at)),
    };
    Problem {
        path,
        line: pos.line,
        column: pos.column,
        message,
    }
}

fn clamp(p: Pos) -> Pos {
    Pos {
        line: p.line.max(1),
        column: p.column.max(1),
    }
}

/// serde_json appends " at line L column C"; we print the position in front instead.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(cut) if msg[cut..].contains(" column ") => msg[..cut].to_string(),
        _ => msg.to_string(),
    }
}

/// The text between backticks after `prefix`: "missing field `kernel`" -> "kernel".
fn quoted_after<'a>(msg: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = msg.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split('`').next()
}
