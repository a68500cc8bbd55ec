//! Which store the server-side commands (`token`, `audit`) open, and opening it.
//!
//! It must not read or change what is in the store.

/// Which store a server-side command opens.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Where state is kept.
    #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
    pub state_dir: std::path::PathBuf,
    /// The store: `sqlite:PATH` or `postgres://...`; defaults to the state directory's.
    #[arg(long, env = "RAMPART_STORE", hide_env_values = true)]
    pub store: Option<String>,
}

/// Opens the store `store` names; on failure prints why and gives exit code 2.
pub(super) async fn open(
    store: &StoreArgs,
) -> Result<std::sync::Arc<rampart_adapters::store::StateStore>, i32> {
    crate::serve::open_store(store.store.as_deref(), &store.state_dir)
        .await
        .map_err(|e| {
            eprintln!("error: {e}");
            2
        })
}
