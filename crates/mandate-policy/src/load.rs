//! Loading and validating a policy directory.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;
use sha2::{Digest, Sha256};

/// The catalog's file name in a policy directory.
pub const CATALOG_FILE: &str = "catalog.toml";
/// Largest policy or schema file read.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Most `.cedar` files in a directory.
pub const MAX_FILES: usize = 1000;
/// Most policies in a set.
pub const MAX_POLICIES: usize = 10_000;

/// One thing wrong with a policy directory, with its place.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file (as given, relative to nothing).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Why a policy directory was refused. Holds every problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.split_first() {
            None => f.write_str("policy set refused"),
            Some((first, [])) => write!(f, "{first}"),
            Some((first, rest)) => write!(f, "{first} (and {} more problems)", rest.len()),
        }
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    fn one(file: impl Into<String>, message: impl Into<String>) -> Self {
        LoadError {
            problems: vec![Problem {
                file: file.into(),
                line: None,
                column: None,
                message: message.into(),
            }],
        }
    }
}

/// A source file: its name (for messages) and text.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Name used in messages, e.g. `policies/10-runtime.cedar`.
    pub name: String,
    /// Contents.
    pub text: String,
}

/// Where a policy came from and what it says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyMeta {
    /// File it is in.
    pub file: String,
    /// 1-based line of its `@id` annotation, when it has one.
    pub line: Option<usize>,
    /// Its `@reason` annotation: why it exists, in words for the person reading a denial.
    pub reason: Option<String>,
    /// Whether it is a `forbid`.
    pub forbid: bool,
}

/// A validated policy set with its schema.
#[derive(Debug)]
pub struct PolicyBundle {
    pub(crate) policies: PolicySet,
    /// The policies without the approval gates.
    pub(crate) ungated: PolicySet,
    /// Ids of the approval gates (`forbid` policies annotated `@needs_approval`).
    pub(crate) gates: BTreeSet<String>,
    pub(crate) schema: Schema,
    pub(crate) meta: HashMap<String, PolicyMeta>,
    pub(crate) actions: BTreeSet<String>,
    pub(crate) catalog: crate::catalog::Catalog,
    pub(crate) names: crate::facts::Names,
    /// "allowed by policy `<id>`" for every policy, built once per load.
    pub(crate) allow_reasons: HashMap<String, String>,
    digest: String,
    source: String,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn problems_from(file: &str, text: &str, diag: &dyn Diagnostic, message: String) -> Problem {
    let offset = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let (line, column) = match offset {
        Some(o) => {
            let (l, c) = line_col(text, o);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    let help = diag.help().map(|h| format!(" ({h})")).unwrap_or_default();
    Problem {
        file: file.to_string(),
        line,
        column,
        message: format!("{message}{help}"),
    }
}

fn read_limited(path: &Path) -> Result<String, LoadError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| LoadError::one(&name, e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(LoadError::one(
            &name,
            format!("file is larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    std::fs::read_to_string(path).map_err(|e| LoadError::one(&name, e.to_string()))
}

impl PolicyBundle {
    /// Loads `dir`: exactly one `*.cedarschema` and the `*.cedar` files, in name order.
    pub fn load_dir(dir: &Path) -> Result<Self, LoadError> {
        let shown = dir.display().to_string();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| LoadError::one(&shown, format!("cannot read policy directory: {e}")))?;
        let mut schemas: Vec<PathBuf> = Vec::new();
        let mut policies: Vec<PathBuf> = Vec::new();
        let mut catalog: Option<PathBuf> = None;
        for entry in entries {
            let path = entry
                .map_err(|e| LoadError::one(&shown, e.to_string()))?
                .path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("cedarschema") => schemas.push(path),
                Some("cedar") => policies.push(path),
                _ if path.file_name().and_then(|n| n.to_str()) == Some(CATALOG_FILE) => {
                    catalog = Some(path);
                }
                _ => {}
            }
        }
        schemas.sort();
        policies.sort();
        let schema_path = match schemas.as_slice() {
            [one] => one,
            [] => {
                return Err(LoadError::one(
                    &shown,
                    "no `.cedarschema` file: policies are validated against a schema, so one is required",
                ));
            }
            _ => {
                return Err(LoadError::one(
                    &shown,
                    "more than one `.cedarschema` file: keep the schema in one file",
                ));
            }
        };
        if policies.len() > MAX_FILES {
            return Err(LoadError::one(
                &shown,
                format!("more than {MAX_FILES} policy files"),
            ));
        }
        let schema = SourceFile {
            name: schema_path.display().to_string(),
            text: read_limited(schema_path)?,
        };
        let mut files = Vec::with_capacity(policies.len());
        for p in &policies {
            files.push(SourceFile {
                name: p.display().to_string(),
                text: read_limited(p)?,
            });
        }
        let catalog = match catalog {
            Some(p) => Some(SourceFile {
                name: p.display().to_string(),
                text: read_limited(&p)?,
            }),
            None => None,
        };
        Self::from_sources_with_catalog(&schema, &files, catalog.as_ref(), &shown)
    }

    /// Builds a bundle from a schema and policy sources held in memory.
    pub fn from_sources(
        schema_src: &SourceFile,
        files: &[SourceFile],
        source: &str,
    ) -> Result<Self, LoadError> {
        Self::from_sources_with_catalog(schema_src, files, None, source)
    }

    /// Builds a bundle from a schema, policy sources and an optional `catalog.toml`.
    pub fn from_sources_with_catalog(
        schema_src: &SourceFile,
        files: &[SourceFile],
        catalog_src: Option<&SourceFile>,
        source: &str,
    ) -> Result<Self, LoadError> {
        let mut problems = Vec::new();
        let catalog = match catalog_src {
            None => crate::catalog::Catalog::default(),
            Some(c) => match crate::catalog::Catalog::parse(&c.text) {
                Ok(cat) => cat,
                Err(message) => {
                    problems.push(Problem {
                        file: c.name.clone(),
                        line: None,
                        column: None,
                        message,
                    });
                    crate::catalog::Catalog::default()
                }
            },
        };
        let schema = match Schema::from_cedarschema_str(&schema_src.text) {
            Ok((schema, _warnings)) => Some(schema),
            Err(e) => {
                problems.push(problems_from(
                    &schema_src.name,
                    &schema_src.text,
                    &e,
                    e.to_string(),
                ));
                None
            }
        };
        let mut set = PolicySet::new();
        let mut ungated = PolicySet::new();
        let mut gates = BTreeSet::new();
        let mut meta: HashMap<String, PolicyMeta> = HashMap::new();
        let mut hasher = Sha256::new();
        hasher.update(schema_src.text.as_bytes());
        if let Some(c) = catalog_src {
            hasher.update(c.text.as_bytes());
        }
        for file in files {
            hasher.update(file.name.as_bytes());
            hasher.update(file.text.as_bytes());
            let parsed = match PolicySet::from_str(&file.text) {
                Ok(p) => p,
                Err(errs) => {
                    for e in errs.iter() {
                        problems.push(problems_from(&file.name, &file.text, e, e.to_string()));
                    }
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                problems.push(Problem {
                    file: file.name.clone(),
                    line: None,
                    column: None,
                    message: "policy templates are not supported; write static policies".into(),
                });
                continue;
            }
            let stem = Path::new(&file.name)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("policy")
                .to_string();
            // The parser names policies `policy0`, `policy1`… in file order; keep that order so
            // generated ids follow the text.
            let mut in_file: Vec<_> = parsed.policies().collect();
            in_file.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            for (n, policy) in in_file.into_iter().enumerate() {
                let (id, line) = match policy.annotation("id") {
                    Some(id) if !id.trim().is_empty() => {
                        let at = file
                            .text
                            .find(&format!("@id(\"{id}\")"))
                            .map(|o| line_col(&file.text, o).0);
                        (id.to_string(), at)
                    }
                    _ => (format!("{stem}.{}", n + 1), None),
                };
                if let Some(first) = meta.get(&id) {
                    problems.push(Problem {
                        file: file.name.clone(),
                        line,
                        column: None,
                        message: format!(
                            "policy id `{id}` is already used in {}{}",
                            first.file,
                            first.line.map(|l| format!(":{l}")).unwrap_or_default()
                        ),
                    });
                    continue;
                }
                let forbid = policy.effect() == cedar_policy::Effect::Forbid;
                let renamed = policy.new_id(PolicyId::new(&id));
                let gate = policy.annotation("needs_approval").is_some();
                if gate && !forbid {
                    problems.push(Problem {
                        file: file.name.clone(),
                        line,
                        column: None,
                        message: format!(
                            "policy `{id}`: `@needs_approval` belongs on a `forbid` policy"
                        ),
                    });
                    continue;
                }
                if gate {
                    gates.insert(id.clone());
                } else if let Err(e) = ungated.add(renamed.clone()) {
                    problems.push(Problem {
                        file: file.name.clone(),
                        line,
                        column: None,
                        message: e.to_string(),
                    });
                    continue;
                }
                if let Err(e) = set.add(renamed) {
                    problems.push(Problem {
                        file: file.name.clone(),
                        line,
                        column: None,
                        message: e.to_string(),
                    });
                    continue;
                }
                meta.insert(
                    id,
                    PolicyMeta {
                        file: file.name.clone(),
                        line,
                        reason: policy.annotation("reason").map(str::to_string),
                        forbid,
                    },
                );
            }
        }
        if meta.len() > MAX_POLICIES {
            problems.push(Problem {
                file: source.to_string(),
                line: None,
                column: None,
                message: format!("more than {MAX_POLICIES} policies"),
            });
        }
        let Some(schema) = schema else {
            return Err(LoadError { problems });
        };
        // Validate whatever parsed, so one run reports every problem there is.
        {
            let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
            for e in result.validation_errors() {
                let id = e.policy_id().to_string();
                let (file, text) = meta
                    .get(&id)
                    .and_then(|m| files.iter().find(|f| f.name == m.file))
                    .map(|f| (f.name.clone(), f.text.as_str()))
                    .unwrap_or_else(|| (source.to_string(), ""));
                let msg = e.to_string();
                let msg = match msg.strip_prefix(&format!("for policy `{id}`, ")) {
                    Some(rest) => format!("policy `{id}`: {rest}"),
                    None => format!("policy `{id}`: {msg}"),
                };
                problems.push(problems_from(&file, text, e, msg));
            }
        }
        if !problems.is_empty() {
            return Err(LoadError { problems });
        }
        let actions = schema
            .actions()
            .filter(|a| a.type_name().to_string() == format!("{}::Action", crate::NAMESPACE))
            .map(|a| a.id().unescaped().to_string())
            .collect();
        let digest = hasher
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let names =
            crate::facts::Names::new().map_err(|e| LoadError::one(source, e.to_string()))?;
        let allow_reasons = meta
            .keys()
            .map(|id| (id.clone(), format!("allowed by policy `{id}`")))
            .collect();
        Ok(PolicyBundle {
            allow_reasons,
            names,
            catalog,
            ungated,
            gates,
            policies: set,
            schema,
            meta,
            actions,
            digest,
            source: source.to_string(),
        })
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Whether there are no policies at all (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// A short fingerprint of the schema and policy texts.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Where the bundle was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the schema declares `action`.
    pub fn declares_action(&self, action: &str) -> bool {
        self.actions.contains(action)
    }

    /// The ids of all policies, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.meta.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Where a policy is and what it says about itself.
    pub fn meta(&self, id: &str) -> Option<&PolicyMeta> {
        self.meta.get(id)
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The tool and resource catalog.
    pub fn catalog(&self) -> &crate::catalog::Catalog {
        &self.catalog
    }

    /// The Cedar policy set, for benchmarks that compare against raw Cedar.
    pub fn cedar_policies(&self) -> &PolicySet {
        &self.policies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
namespace Mandate {
  entity Agent = { "tier": String };
  entity Tool;
  action "call" appliesTo { principal: [Agent], resource: [Tool], context: {} };
}
"#;

    fn src(name: &str, text: &str) -> SourceFile {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn loads_and_names_policies() {
        let b = PolicyBundle::from_sources(
            &src("s.cedarschema", SCHEMA),
            &[src(
                "a.cedar",
                "@id(\"p1\")\npermit(principal, action, resource);\n\nforbid(principal, action, resource) when { principal.tier == \"high\" };",
            )],
            "test",
        )
        .unwrap();
        assert_eq!(b.policy_ids(), vec!["a.2".to_string(), "p1".to_string()]);
        assert_eq!(b.meta("p1").unwrap().line, Some(1));
        assert!(b.declares_action("call"));
        assert!(!b.declares_action("export"));
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let e = PolicyBundle::from_sources(
            &src("s.cedarschema", SCHEMA),
            &[src(
                "bad.cedar",
                "permit(principal, action, resource);\npermit(principal action);",
            )],
            "test",
        )
        .unwrap_err();
        let p = &e.problems[0];
        assert_eq!(p.file, "bad.cedar");
        assert_eq!(p.line, Some(2), "{e}");
        assert!(e.to_string().starts_with("bad.cedar:2:"), "{e}");
    }

    #[test]
    fn validation_error_names_policy_and_line() {
        let e = PolicyBundle::from_sources(
            &src("s.cedarschema", SCHEMA),
            &[src(
                "v.cedar",
                "\n\n@id(\"typo\")\npermit(principal, action, resource) when { principal.teir == \"x\" };",
            )],
            "test",
        )
        .unwrap_err();
        let p = &e.problems[0];
        assert_eq!(p.file, "v.cedar");
        assert_eq!(p.line, Some(4), "{e}");
        assert!(p.message.contains("policy `typo`"), "{e}");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let e = PolicyBundle::from_sources(
            &src("s.cedarschema", SCHEMA),
            &[
                src(
                    "a.cedar",
                    "@id(\"x\")\npermit(principal, action, resource);",
                ),
                src(
                    "b.cedar",
                    "@id(\"x\")\npermit(principal, action, resource);",
                ),
            ],
            "test",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "b.cedar:1: policy id `x` is already used in a.cedar:1"
        );
    }

    #[test]
    fn schema_is_required() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.cedar"),
            "permit(principal, action, resource);",
        )
        .unwrap();
        let e = PolicyBundle::load_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("no `.cedarschema` file"), "{e}");
    }
}
