//! `mandate policy check` and `mandate policy test` on the shipped pack and on broken input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn mandate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(args)
        .env_remove("MANDATE_CONFIG")
        .output()
        .unwrap()
}

fn pack() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

#[test]
fn the_shipped_pack_passes_its_own_tables() {
    let out = mandate(&["--json", "policy", "test", pack().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = results.as_array().unwrap();
    assert!(results.len() >= 20);
    assert!(results.iter().all(|r| r["passed"] == true));
    for scenario in ["S1", "S2", "S3", "S9", "S10", "S12"] {
        assert!(
            results
                .iter()
                .any(|r| r["name"].as_str().unwrap().contains(scenario)),
            "no case for {scenario}"
        );
    }
    let out = mandate(&["policy", "check", pack().to_str().unwrap()]);
    assert!(out.status.success());
}

#[test]
fn a_wrong_expectation_fails_with_what_was_decided() {
    let cases = tempfile::tempdir().unwrap();
    std::fs::write(
        cases.path().join("mine.toml"),
        r#"
[[agents]]
id = "bot"
owner = "o"
tier = "low"
envelope = "read:x"

[[cases]]
name = "reading x is denied (wrong on purpose)"
agent = "bot"
task = { scope = "read:x" }
action = "read"
resource = { type = "resource", id = "x" }
expect = "deny"
"#,
    )
    .unwrap();
    let out = mandate(&[
        "policy",
        "test",
        pack().to_str().unwrap(),
        "--cases",
        cases.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL reading x is denied"), "{text}");
    assert!(
        text.contains("expected deny, got allow by [act-within-task-scope]"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 policy test cases failed"));

    std::fs::write(cases.path().join("mine.toml"), "[[cases]]\nname = 1\n").unwrap();
    let out = mandate(&[
        "policy",
        "test",
        pack().to_str().unwrap(),
        "--cases",
        cases.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mine.toml"));
}

#[test]
fn a_broken_directory_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(pack()).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("catalog.toml"),
        "[tools.x]\nrisk = \"extreme\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("60-typo.cedar"),
        "permit (principal, action, resource)\nwhen { context.flow.calls > \"many\" };\n",
    )
    .unwrap();
    let out = mandate(&["policy", "check", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("catalog.toml: `x`: risk must be"), "{err}");
    assert!(err.contains("60-typo.cedar:2:"), "{err}");
}
