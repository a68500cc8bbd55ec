//! `rampart migrations check`: classes, exit codes, JSON shape, annotations and parse
//! errors, on migration files written the way teams write them.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::{rampart, repo};

fn write(dir: &Path, name: &str, sql: &str) {
    std::fs::write(dir.join(name), sql).unwrap();
}

fn check(args: &[&Path]) -> (i32, serde_json::Value, String) {
    let out = rampart()
        .args(["migrations", "check", "--output", "json"])
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_follow_the_worst_class() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "001_add.sql",
        "SET lock_timeout = '2s';\nALTER TABLE orders ADD COLUMN coupon text;\nCREATE INDEX CONCURRENTLY orders_coupon ON orders (coupon);\n",
    );
    write(
        d,
        "002_rename.sql",
        "ALTER TABLE orders RENAME COLUMN total TO amount;\n",
    );
    write(
        d,
        "003_drop.sql",
        "ALTER TABLE orders DROP COLUMN legacy_flag;\n",
    );
    let (code, v, _) = check(&[&d.join("001_add.sql")]);
    assert_eq!((code, v["class"].as_str()), (0, Some("expand")), "{v}");
    let (code, v, _) = check(&[&d.join("001_add.sql"), &d.join("002_rename.sql")]);
    assert_eq!((code, v["class"].as_str()), (3, Some("contract")), "{v}");
    let (code, v, _) = check(&[d]);
    assert_eq!(
        (code, v["class"].as_str()),
        (4, Some("irreversible")),
        "{v}"
    );
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3, "a directory is read in name order");
    assert_eq!(
        files[2]["path"].as_str().unwrap(),
        d.join("003_drop.sql").display().to_string()
    );
    let s = &files[2]["statements"][0];
    assert_eq!(
        (s["line"].as_u64(), s["class"].as_str()),
        (Some(1), Some("irreversible"))
    );
    assert_eq!(s["rules"], serde_json::json!(["drop-column"]));
}

#[test]
fn a_reviewer_annotation_with_a_reason_marks_a_statement_safe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "004_backfill.sql",
        "ALTER TABLE orders ADD COLUMN amount_cents bigint;\n-- rampart:safe backfill of the new column only, reviewed by dana\nUPDATE orders SET amount_cents = total * 100;\n",
    );
    let (code, v, _) = check(&[d]);
    assert_eq!(code, 0, "{v}");
    let s = &v["files"][0]["statements"][1];
    assert_eq!(
        s["safe"],
        "backfill of the new column only, reviewed by dana"
    );
    write(d, "005_bad.sql", "-- rampart:safe\nDELETE FROM orders;\n");
    let (code, _, err) = check(&[&d.join("005_bad.sql")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("005_bad.sql:1:") && err.contains("needs a reason"),
        "{err}"
    );
}

#[test]
fn a_file_that_does_not_parse_exits_2_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.sql",
        "CREATE TABLE a (id int);\nALTER TABLE a ADD COLUMN;\n",
    );
    let (code, v, err) = check(&[&dir.path().join("bad.sql")]);
    assert_eq!(code, 2);
    assert_eq!(v["error"], "invalid");
    assert!(err.contains("bad.sql:2:"), "{err}");
    let (code, _, _) = check(&[&dir.path().join("missing.sql")]);
    assert_eq!(code, 2);
    // A comment saved in Latin-1 (`-- café`, 0xE9) on line 2: refused at its line and
    // column, as a policy's is, not as an unreadable file.
    let latin1 = dir.path().join("latin1.sql");
    std::fs::write(
        &latin1,
        b"CREATE TABLE b (id int);\n-- caf\xE9\nALTER TABLE b ADD COLUMN note text;\n",
    )
    .unwrap();
    let (code, v, err) = check(&[&latin1]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(v["error"], "invalid", "{v}");
    assert!(err.contains("latin1.sql:2:7:"), "{err}");
}

#[test]
fn every_rule_is_documented_with_an_example() {
    let doc = std::fs::read_to_string(repo().join("docs/migrations.md")).unwrap();
    for rule in rampart_core::migrations::RULES {
        assert!(
            doc.contains(&format!("### `{}`", rule.name)),
            "docs/migrations.md lacks `{}`",
            rule.name
        );
    }
}

/// A migrations directory with a link back to itself (or to `/`) walked for ever: the
/// walk followed every directory link. Each directory is read once now; a linked
/// subdirectory is still read (its breaking migrations must not go unclassified).
#[test]
fn a_directory_link_back_up_ends_the_walk_and_a_linked_directory_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("migrations");
    std::fs::create_dir(&d).unwrap();
    write(
        &d,
        "001_add.sql",
        "ALTER TABLE orders ADD COLUMN coupon text;\n",
    );
    std::os::unix::fs::symlink(&d, d.join("again")).unwrap();
    std::os::unix::fs::symlink(&d, d.join("and_again")).unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    write(
        &shared,
        "002_drop.sql",
        "ALTER TABLE orders DROP COLUMN legacy;\n",
    );
    std::os::unix::fs::symlink(&shared, d.join("shared")).unwrap();
    let (code, v, err) = check(&[&d]);
    assert_eq!(v["files"].as_array().map(Vec::len), Some(2), "{v} {err}");
    assert_ne!(
        code, 0,
        "the linked directory's DROP COLUMN is classified: {v}"
    );
}
