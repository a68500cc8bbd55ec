//! `rampart completions`: prints a shell completion script for the command line it is
//! given (so it need not know `cli`).

/// The arguments of `rampart completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs `rampart completions` for `cmd`, the whole `rampart` command line.
pub fn main(args: CompletionsArgs, mut cmd: clap::Command) -> i32 {
    // Made whole first: clap's writer panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "rampart", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => crate::cli::CLOSED_PIPE,
        Err(e) => {
            eprintln!("error: writing the completion script: {e}");
            1
        }
    }
}
