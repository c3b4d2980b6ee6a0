//! Benchmarks of Mandate. The library part builds the fixtures the criterion benchmarks share:
//! policy sets of a chosen size and the agents and tasks they are asked about.

use std::path::{Path, PathBuf};

/// The shipped policy pack.
pub fn pack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

/// A policy directory: the shipped pack plus `extra` generated policies, each a `forbid` on one
/// target nobody asks about, so they are evaluated and never decide (the way a large real set
/// mostly is).
pub fn pack_with_extra(extra: usize) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(pack_dir())? {
        let p = entry?.path();
        if p.is_file()
            && let Some(name) = p.file_name()
        {
            std::fs::copy(&p, dir.path().join(name))?;
        }
    }
    let mut text = String::new();
    for i in 0..extra {
        text.push_str(&format!(
            "@id(\"generated-{i}\")\n@reason(\"generated policy {i}\")\nforbid (principal, action in Mandate::Action::\"runtime\", resource == Mandate::Resource::\"generated-{i}\")\nwhen {{ context.flow.data_read.contains(\"class-{i}\") || context.task.intent_class == \"class-{i}\" }};\n\n"
        ));
    }
    if extra > 0 {
        std::fs::write(dir.path().join("90-generated.cedar"), text)?;
    }
    Ok(dir)
}
