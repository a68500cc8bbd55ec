//! The systemd units in `deploy/systemd/` as systemd reads them: `systemd-analyze
//! verify` (Debian's systemd) finds no error, and every rampart command line in them
//! parses with this binary's own arguments. (No systemd runs here to start them; the
//! commands they run are the ones the data-plane tests run.)

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

/// The units, with the installed binary's path pointing at the one under test, and
/// the template instantiated for a service named `checkout`.
fn units(dir: &std::path::Path) -> Vec<(String, String)> {
    let src = common::repo().join("deploy/systemd");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let name = name.replace("@.service", "@checkout.service");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/rampart", &common::exe());
        std::fs::write(dir.join(&name), &text).unwrap();
        out.push((name, text));
    }
    out.sort();
    out
}

#[test]
fn the_systemd_units_verify_and_their_commands_parse() {
    let dir = tempfile::tempdir().unwrap();
    let units = units(dir.path());
    assert!(units.len() >= 2, "{units:?}");
    let paths: Vec<_> = units.iter().map(|(n, _)| dir.path().join(n)).collect();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze (Debian's systemd) is installed by scripts/test.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Users and directories of the target host do not exist here; the rest must be clean.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("/var/lib/rampart") && !l.trim().is_empty())
        .collect();
    assert!(out.status.success() && problems.is_empty(), "{stderr}");
    for (name, text) in &units {
        for line in text.lines() {
            let Some(cmd) = line
                .strip_prefix("ExecStart=")
                .or_else(|| line.strip_prefix("ExecReload="))
            else {
                continue;
            };
            let cmd = cmd.replace("%i", "checkout");
            let mut args = cmd.split_whitespace().skip(1);
            let sub = args.next().unwrap();
            // The subcommand's own parser: `--help` after every argument it was given.
            let parsed = common::rampart()
                .arg(sub)
                .args(args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                parsed.status.success(),
                "{name}: `{cmd}` does not parse: {}",
                String::from_utf8_lossy(&parsed.stderr)
            );
        }
    }
}
