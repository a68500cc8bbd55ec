//! `rampart audit verify`: checks the hash-chained audit log and every release log
//! against it.
//!
//! Only reads; it must not repair or change the log.

use super::store_args::{StoreArgs, open};
use crate::client::show;
use crate::report::Output;

/// The arguments of `rampart audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub what: AuditCommand,
}

/// `rampart audit ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and every release log against it: exit 0 when intact, 4
    /// when anything was changed, inserted or removed.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Also require that the chain still holds a record with this hash (a head
        /// printed earlier and kept elsewhere: detects a truncated tail).
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// Runs `rampart audit`.
pub async fn main(args: AuditArgs) -> i32 {
    audit(args.what).await
}

/// `rampart audit`.
async fn audit(what: AuditCommand) -> i32 {
    let AuditCommand::Verify {
        store,
        expect_head,
        output,
    } = what;
    let store = match open(&store).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut report = match store.verify_chain().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if let Some(head) = expect_head {
        let held = store
            .chain_records(None)
            .await
            .map(|rs| rs.iter().any(|r| r.hash == head))
            .unwrap_or(false);
        if !held {
            report.ok = false;
            report.problems.push(format!(
                "no record has the expected head {head} (records were removed from the end)"
            ));
        }
    }
    show(output, &report, |r| {
        for p in &r.problems {
            println!("TAMPERED: {p}");
        }
        println!(
            "{}: {} chain record(s), {} release log entr(ies) checked; head {}",
            if r.ok { "intact" } else { "NOT intact" },
            r.records,
            r.log_entries,
            r.head
        );
    });
    if report.ok { 0 } else { 4 }
}
