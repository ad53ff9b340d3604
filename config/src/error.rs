//! Config errors: every problem carries its JSON path and the position of its value.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON path of the offending value, e.g. `network[1].mac`; empty for the whole document.
    pub path: String,
    /// 1-based line where the value starts; 0 when the config did not come from text.
    pub line: usize,
    /// 1-based byte column where the value starts; 0 when unknown.
    pub column: usize,
    pub message: String,
}

impl Problem {
    /// A problem without a position yet; [`crate::parse()`] fills it in from the source text.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            line: 0,
            column: 0,
            message: message.into(),
        }
    }

    /// Renders `origin:line:column: path: message` (parts that are unknown are left out).
    pub fn display_with<'a>(&'a self, origin: &'a str) -> impl fmt::Display + 'a {
        ProblemDisplay {
            origin,
            problem: self,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.display_with("").fmt(f)
    }
}

struct ProblemDisplay<'a> {
    origin: &'a str,
    problem: &'a Problem,
}

impl fmt::Display for ProblemDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let p = self.problem;
        if !self.origin.is_empty() {
            write!(f, "{}:", self.origin)?;
        }
        if p.line > 0 {
            write!(f, "{}:{}:", p.line, p.column)?;
        }
        if !self.origin.is_empty() || p.line > 0 {
            f.write_str(" ")?;
        }
        if !p.path.is_empty() {
            write!(f, "{}: ", p.path)?;
        }
        f.write_str(&p.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// Not JSON, or JSON of the wrong shape (unknown field, wrong type, missing field,
    /// malformed MAC/CIDR). serde stops at the first one, so there is exactly one problem.
    #[error("{}", problem.display_with(origin))]
    Deserialize { origin: String, problem: Problem },
    /// Well-formed, but the values are wrong; every problem found is listed.
    #[error("{}", render(origin, problems))]
    Validate {
        origin: String,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems this error reports (empty for I/O errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Deserialize { problem, .. } => std::slice::from_ref(problem),
            ConfigError::Validate { problems, .. } => problems,
        }
    }
}

fn render(origin: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.display_with(origin).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_when_validate_error_then_one_line_per_problem() {
        let mut a = Problem::new("network[1].mac", "must be unicast");
        a.line = 12;
        a.column = 14;
        let b = Problem::new("vcpus", "must be 1..=32");
        let err = ConfigError::Validate {
            origin: "vm1.json".into(),
            problems: vec![a, b],
        };
        assert_eq!(
            err.to_string(),
            "vm1.json:12:14: network[1].mac: must be unicast\nvm1.json: vcpus: must be 1..=32"
        );
        assert_eq!(err.problems().len(), 2);
    }

    #[test]
    fn display_when_no_origin_and_no_path_then_message_only() {
        assert_eq!(Problem::new("", "oops").to_string(), "oops");
    }
}
