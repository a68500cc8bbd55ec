//! `rampart token create|list|revoke`: the API tokens of `rampart serve`, managed in
//! the store directly (run it on the server's machine).
//!
//! Only the token's hash is kept; the secret is printed once and never again.

use std::sync::Arc;

use rampart_core::Millis;
use rampart_core::ports::Clock;

use super::store_args::{StoreArgs, open};
use crate::client::show;
use crate::report::Output;

/// The arguments of `rampart token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub what: TokenCommand,
}

/// `rampart token ...`: manages the API tokens in the store directly (run it on the
/// server's machine).
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints it once, on stdout. Only its hash is kept.
    Create {
        /// `viewer`, `deployer`, `approver`, `admin`, or `agent` (an AI agent through
        /// `rampart mcp`: never approves, promotes, resumes or lifts a freeze).
        #[arg(long, value_parser = ["viewer", "deployer", "approver", "admin", "agent"])]
        role: String,
        /// A unique name: what the token does is recorded under it.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Output format (`json` prints `{"name", "role", "token"}`).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List tokens (names and roles; never secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke a token by name.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Output format (`json` prints `{"name", "revoked"}`).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// Runs `rampart token`.
pub async fn main(args: TokenArgs, clock: Arc<dyn Clock>) -> i32 {
    token(args.what, clock.now()).await
}

/// `rampart token`.
/// `now` is when a token is created or revoked.
async fn token(what: TokenCommand, now: Millis) -> i32 {
    match what {
        TokenCommand::Create {
            role,
            name,
            store,
            output,
        } => {
            if let Err(e) = crate::serve::api::check_token_name(&name) {
                eprintln!("error: {e}");
                return 2;
            }
            let store = match open(&store).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store
                .create_token(&name, &role, &crate::client::cli_actor(), now)
                .await
            {
                Ok(secret) => {
                    match output {
                        Output::Json => println!(
                            "{}",
                            serde_json::json!({"name": name, "role": role, "token": secret})
                        ),
                        Output::Text => println!("{secret}"),
                    }
                    eprintln!("token {name} ({role}) created; it is shown only this once");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    5
                }
            }
        }
        TokenCommand::List { store, output } => {
            let store = match open(&store).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store.tokens().await {
                Ok(tokens) => show(output, &tokens, |ts| {
                    for t in ts {
                        println!(
                            "{:<24} {:<9} by {}{}",
                            t.name,
                            t.role,
                            t.created_by,
                            if t.revoked { " (revoked)" } else { "" }
                        );
                    }
                }),
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        TokenCommand::Revoke {
            name,
            store,
            output,
        } => {
            let store = match open(&store).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            match store
                .revoke_token(&name, &crate::client::cli_actor(), now)
                .await
            {
                Ok(()) => {
                    match output {
                        Output::Json => {
                            println!("{}", serde_json::json!({"name": name, "revoked": true}));
                        }
                        Output::Text => println!("token {name} revoked"),
                    }
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    5
                }
            }
        }
    }
}
