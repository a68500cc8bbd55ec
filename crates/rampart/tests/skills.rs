//! The skills of the example policies (`examples/skills/NAME/SKILL.md` for
//! `examples/NAME.yaml`) are what
//! `rampart skill` generates from them now: a policy change that is not reflected in
//! its skill fails here. Regenerate with `scripts/skills.sh`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{rampart, repo};

#[test]
fn every_example_policy_has_its_generated_skill_checked_in() {
    let root = repo();
    let mut policies: Vec<_> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    policies.sort();
    assert!(policies.len() >= 3, "{policies:?}");
    let mut stale = Vec::new();
    for p in &policies {
        let rel = p.strip_prefix(&root).unwrap();
        let out = rampart()
            .current_dir(&root)
            .args(["skill", "-f"])
            .arg(rel)
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            rel.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let service = v["service"].as_str().unwrap();
        let name = p.file_stem().unwrap();
        let path = root.join("examples/skills").join(name).join("SKILL.md");
        let generated = v["skill"].as_str().unwrap();
        assert!(generated.starts_with(&format!("---\nname: release-{service}\n")));
        match std::fs::read_to_string(&path) {
            Ok(checked_in) if checked_in == generated => {}
            _ => stale.push(path.display().to_string()),
        }
    }
    assert!(
        stale.is_empty(),
        "out of date (run scripts/skills.sh): {stale:?}"
    );
}
