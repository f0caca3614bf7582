//! The ledger-svc binary: configuration, telemetry, build, run. Everything else is in the library.
//!
//! `ledger-svc` serves; `ledger-svc verify [--merchant ID]` recomputes every balance from the
//! journal and the lots, prints any difference and exits non-zero when there is one.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

#[derive(Parser)]
#[command(name = "ledger-svc", about = "Kopilka's points ledger")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the LedgerService (the default).
    Serve,
    /// Recompute balances from the journal and report differences (there must be none).
    Verify {
        /// Only this merchant; default every merchant.
        #[arg(long)]
        merchant: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = ledger_svc::Config::from_env()?;
    kopilka_runtime::telemetry::init(&config.telemetry);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let service = ledger_svc::build(config).await?;
            service
                .run_until(kopilka_runtime::shutdown::signal())
                .await?;
        }
        Command::Verify { merchant } => {
            let db = kopilka_runtime::Db::connect(
                config.service.database_url.expose_secret(),
                2,
                ledger_svc::MIGRATIONS,
            )
            .await?;
            let ledger = ledger_svc::ledger::Ledger::new(
                db,
                Arc::new(ledger_svc::domain::clock::SystemClock),
            );
            let report = ledger
                .verify(&kopilka_proto::ledger::VerifyRequest {
                    merchant_id: merchant.unwrap_or_default(),
                    customer_ids: vec![],
                    max_differences: 10_000,
                })
                .await?;
            println!(
                "checked {} accounts and {} transactions: {}",
                report.accounts_checked,
                report.transactions_checked,
                if report.ok {
                    "no differences"
                } else {
                    "DIFFERENCES FOUND"
                }
            );
            for d in &report.differences {
                println!(
                    "  customer {:?} {}: projected {} recomputed {}",
                    d.customer_id, d.field, d.projected, d.recomputed
                );
            }
            if !report.ok {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
