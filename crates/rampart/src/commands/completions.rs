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
    clap_complete::generate(args.shell, &mut cmd, "rampart", &mut std::io::stdout());
    0
}
