//! Language-neutral test vectors: their file format, loading, and a runner
//! that plays each case against the reference sans-IO cores.
//!
//! A vector file is JSON: `{"format": 1, "role": "client" | "host",
//! "cases": [...]}`. spec/CONFORMANCE.md documents every field; the types
//! below are that format's reading, and they refuse unknown members so that
//! a typo in a vector fails loudly instead of silently checking nothing.

pub mod client;
pub mod host;
pub mod matcher;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// How strongly an implementation is expected to pass a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Every conforming implementation passes it (a MUST of the spec).
    Required,
    /// Implementations should pass it (a SHOULD, or a detail several
    /// correct behaviours could differ on).
    Recommended,
}

impl std::str::FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "required" => Ok(Tier::Required),
            "recommended" => Ok(Tier::Recommended),
            other => Err(format!("{other:?} is not a tier (required, recommended)")),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Required => "required",
            Tier::Recommended => "recommended",
        })
    }
}

/// Which side of the protocol a case tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The implementation under test is a client; the vector plays the host.
    Client,
    /// The implementation under test is a host; the vector plays clients.
    Host,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Host => "host",
        })
    }
}

/// The members every case has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseInfo {
    /// Stable kebab-case name, unique across all vectors.
    pub name: String,
    /// Required or recommended.
    pub tier: Tier,
    /// One line saying what the case checks.
    pub description: String,
    /// Requirement ids of spec/PROTOCOL.md the case checks (e.g. `P7`).
    pub spec: Vec<String>,
    /// The file the case came from, relative to the vectors directory.
    pub file: String,
}

/// One case, of either role.
#[derive(Debug, Clone)]
pub enum Case {
    /// A client case.
    Client(client::ClientCase),
    /// A host case.
    Host(host::HostCase),
}

impl Case {
    /// The common members.
    pub fn info(&self) -> &CaseInfo {
        match self {
            Case::Client(c) => &c.info,
            Case::Host(c) => &c.info,
        }
    }

    /// The side tested.
    pub fn role(&self) -> Role {
        match self {
            Case::Client(_) => Role::Client,
            Case::Host(_) => Role::Host,
        }
    }

    /// Plays the case against the reference core of its role.
    pub fn run_reference(&self) -> Result<(), Failure> {
        match self {
            Case::Client(c) => client::run(c),
            Case::Host(c) => host::run(c),
        }
    }
}

/// Why a case failed: at which step (0-based; `None` for the case's setup or
/// its whole-case checks) and what differed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The failing step's index in `steps`.
    pub step: Option<usize>,
    /// What differed.
    pub message: String,
}

impl Failure {
    /// A failure at step `step`.
    pub fn at(step: usize, message: impl Into<String>) -> Self {
        Self {
            step: Some(step),
            message: message.into(),
        }
    }

    /// A failure of the case as a whole.
    pub fn case(message: impl Into<String>) -> Self {
        Self {
            step: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            Some(step) => write!(f, "step {step}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Why vectors could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not a valid vector file.
    #[error("{path}: {message}")]
    Format {
        /// The path.
        path: PathBuf,
        /// What is wrong, naming the case when there is one.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    format: u32,
    role: Role,
    cases: Vec<Value>,
}

#[derive(Deserialize)]
struct RawInfo {
    name: String,
    tier: Tier,
    description: String,
    #[serde(default)]
    spec: Vec<String>,
}

/// The vectors directory of this crate's source (see [`EMBEDDED`] for the
/// copies built into the binary).
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn is_kebab(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            json_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads every `*.json` vector file under `dir`, in path order, and checks
/// the rules every case obeys: kebab-case names unique across files, a
/// one-line description, steps that parse.
pub fn load_dir(dir: &Path) -> Result<Vec<Case>, LoadError> {
    let mut files = Vec::new();
    json_files(dir, &mut files)?;
    let mut texts = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        texts.push((rel, text));
    }
    load_texts(
        texts
            .iter()
            .map(|(rel, text)| (rel.as_str(), text.as_str())),
    )
}

/// The vector files built into this binary, by path relative to the
/// vectors directory: what a run uses unless `--vectors` names a directory,
/// so that the binary works wherever it is copied.
/// `tests/vectors.rs` checks this list against the directory.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "client/calls.json",
        include_str!("../../vectors/client/calls.json"),
    ),
    (
        "client/hostile-patches.json",
        include_str!("../../vectors/client/hostile-patches.json"),
    ),
    (
        "client/patches.json",
        include_str!("../../vectors/client/patches.json"),
    ),
    (
        "client/prechecks.json",
        include_str!("../../vectors/client/prechecks.json"),
    ),
    (
        "client/results.json",
        include_str!("../../vectors/client/results.json"),
    ),
    (
        "client/silence.json",
        include_str!("../../vectors/client/silence.json"),
    ),
    (
        "client/snapshots.json",
        include_str!("../../vectors/client/snapshots.json"),
    ),
    (
        "host/calls.json",
        include_str!("../../vectors/host/calls.json"),
    ),
    (
        "host/hostile.json",
        include_str!("../../vectors/host/hostile.json"),
    ),
    (
        "host/publications.json",
        include_str!("../../vectors/host/publications.json"),
    ),
    (
        "host/sync.json",
        include_str!("../../vectors/host/sync.json"),
    ),
];

/// The vectors built into this binary ([`EMBEDDED`]).
pub fn load_embedded() -> Result<Vec<Case>, LoadError> {
    load_texts(EMBEDDED.iter().copied())
}

/// Loads vector files given as (path relative to the vectors directory,
/// text), in the order given, with the checks of [`load_dir`].
pub fn load_texts<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Case>, LoadError> {
    let mut cases = Vec::new();
    let mut names = std::collections::BTreeMap::new();
    for (rel, text) in files {
        let format_err = |message: String| LoadError::Format {
            path: PathBuf::from(rel),
            message,
        };
        let raw: RawFile = serde_json::from_str(text).map_err(|e| format_err(e.to_string()))?;
        if raw.format != 1 {
            return Err(format_err(format!("unknown format {}", raw.format)));
        }
        for (i, value) in raw.cases.into_iter().enumerate() {
            let info: RawInfo = serde_json::from_value(value.clone())
                .map_err(|e| format_err(format!("case #{}: {e}", i + 1)))?;
            let name = info.name.clone();
            if !is_kebab(&name) {
                return Err(format_err(format!("case name {name:?} is not kebab-case")));
            }
            if info.description.trim().is_empty() || info.description.contains('\n') {
                return Err(format_err(format!("{name}: description must be one line")));
            }
            if let Some(other) = names.insert(name.clone(), rel.to_owned()) {
                return Err(format_err(format!("{name}: name also used in {other}")));
            }
            let info = CaseInfo {
                name: info.name,
                tier: info.tier,
                description: info.description,
                spec: info.spec,
                file: rel.to_owned(),
            };
            let case = match raw.role {
                Role::Client => client::ClientCase::parse(info, value).map(Case::Client),
                Role::Host => host::HostCase::parse(info, value).map(Case::Host),
            }
            .map_err(|e| format_err(format!("{name}: {e}")))?;
            cases.push(case);
        }
    }
    Ok(cases)
}

/// Reads a uint64 written as a decimal string or a JSON number.
pub(crate) fn u64_of(value: &Value) -> Result<u64, String> {
    match value {
        Value::String(s) => s.parse().map_err(|_| format!("{s:?} is not a uint64")),
        Value::Number(n) => n.as_u64().ok_or_else(|| format!("{n} is not a uint64")),
        other => Err(format!("{other} is not a uint64")),
    }
}

/// Takes the single member of `step` that names its action, leaving the
/// members in `known`, and refuses anything else.
pub(crate) fn split_step(
    step: &Value,
    actions: &[&str],
    known: &[&str],
) -> Result<(String, Value), String> {
    let Value::Object(map) = step else {
        return Err(format!("a step must be an object, got {step}"));
    };
    let mut action = None;
    for (k, v) in map {
        if actions.contains(&k.as_str()) {
            if action.is_some() {
                return Err(format!("a step has more than one action: {step}"));
            }
            action = Some((k.clone(), v.clone()));
        } else if !known.contains(&k.as_str()) {
            return Err(format!("unknown step member {k:?}"));
        }
    }
    action.ok_or_else(|| format!("a step needs one of {actions:?}: {step}"))
}
