//! `rampart sample-service`: the bundled sample HTTP service's arguments; the service
//! itself is `crate::sample`.

/// The arguments of `rampart sample-service`.
#[derive(Debug, clap::Args)]
pub struct SampleServiceArgs {
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    pub port: u16,
    /// Version to report; defaults to $RAMPART_VERSION.
    #[arg(long, env = "RAMPART_VERSION", default_value = "dev")]
    pub version: String,
}

/// Runs `rampart sample-service` until interrupted.
pub async fn main(args: SampleServiceArgs) -> i32 {
    let SampleServiceArgs { port, version } = args;
    let behaviour = match crate::sample::Behaviour::from_env(&version) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sample-service: {e:#}");
            return 2;
        }
    };
    match crate::sample::serve(port, behaviour).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e:#}");
            1
        }
    }
}
