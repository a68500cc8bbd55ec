//! `rampart skill`: writes the agent skill (SKILL.md) for a service's releases,
//! generated from its policy.
//!
//! Writes only the file it is asked to; it must not change any state.

use std::path::PathBuf;

use crate::report::Output;

/// The arguments of `rampart skill`.
#[derive(Debug, clap::Args)]
pub struct SkillArgs {
    /// The policy file.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: PathBuf,
    /// Write DIR/SKILL.md instead of printing it.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Output format (`json` prints `{"service", "path", "skill"}`).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Runs `rampart skill`.
pub fn main(args: SkillArgs) -> i32 {
    skill(&args.file, args.out.as_deref(), args.output)
}

fn skill(file: &std::path::Path, out: Option<&std::path::Path>, output: Output) -> i32 {
    let policy = match crate::run::policy_file(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let md = rampart_core::skill::render(&policy, &file.display().to_string());
    let path = match out {
        None => None,
        Some(dir) => {
            let path = dir.join("SKILL.md");
            if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &md)) {
                eprintln!("error: {}: {e}", path.display());
                return 1;
            }
            Some(path)
        }
    };
    match (output, &path) {
        (Output::Json, _) => println!(
            "{}",
            serde_json::json!({"service": policy.service, "path": path.as_ref().map(|p| p.display().to_string()), "skill": md})
        ),
        (Output::Text, None) => print!("{md}"),
        (Output::Text, Some(p)) => println!("{}", p.display()),
    }
    0
}
