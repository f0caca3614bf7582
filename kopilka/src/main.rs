//! The `kopilka` command. `kopilka dev` runs the whole suite on the embedded default;
//! `kopilka admin …` and `kopilka receipt …` call a gateway; `kopilka load` drives one.

mod cli;
mod load;

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kopilka::{Ports, Suite, SuiteConfig};
use kopilka_runtime::config::TelemetrySettings;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "kopilka",
    version,
    about = "Kopilka: a loyalty-program backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all five services in one process on SQLite files, with a demo merchant seeded.
    Dev(DevArgs),
    /// Administer a merchant over the gateway with an admin key: stores, terminals, keys, program.
    Admin(cli::admin::AdminArgs),
    /// Ring up a receipt by hand: calculate, confirm, refund.
    Receipt(cli::receipt::ReceiptArgs),
    /// Generate checkout load against a running gateway and report latencies.
    Load(load::LoadArgs),
    /// Seed the demo merchant straight into a gateway database and print its keys.
    #[command(hide = true)]
    SeedDemo(cli::seed::SeedArgs),
}

#[derive(Args)]
struct DevArgs {
    /// Where the SQLite files and the demo keys live.
    #[arg(long, env = "KOPILKA_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// The address the gateway binds to (the internal services always listen on loopback).
    #[arg(long, env = "KOPILKA_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    #[arg(long, env = "KOPILKA_GATEWAY_PORT", default_value_t = Ports::DEFAULT.gateway)]
    gateway_port: u16,
    #[arg(long, env = "KOPILKA_CARDS_PORT", default_value_t = Ports::DEFAULT.cards)]
    cards_port: u16,
    #[arg(long, env = "KOPILKA_RULES_PORT", default_value_t = Ports::DEFAULT.rules)]
    rules_port: u16,
    #[arg(long, env = "KOPILKA_LEDGER_PORT", default_value_t = Ports::DEFAULT.ledger)]
    ledger_port: u16,
    #[arg(long, env = "KOPILKA_NOTIFY_PORT", default_value_t = Ports::DEFAULT.notify)]
    notify_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = |result: cli::CliResult| match result {
        Ok(()) => Ok(()),
        Err(e) => std::process::exit(cli::exit_code(&e)),
    };
    match cli.command {
        Command::Dev(args) => {
            let telemetry: TelemetrySettings =
                kopilka_runtime::config::from_env(TelemetrySettings::default())?;
            kopilka_runtime::telemetry::init(&telemetry);
            dev(args).await
        }
        Command::Admin(args) => client(cli::admin::run(args).await),
        Command::Receipt(args) => client(cli::receipt::run(args).await),
        Command::Load(args) => client(load::run(args).await.map_err(cli::CliError::Other)),
        Command::SeedDemo(args) => client(cli::seed::run(args).await.map_err(cli::CliError::Other)),
    }
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let ports = Ports {
        gateway: args.gateway_port,
        cards: args.cards_port,
        rules: args.rules_port,
        ledger: args.ledger_port,
        notify: args.notify_port,
    };
    let signal = kopilka_runtime::shutdown::signal();
    let suite = Suite::build(SuiteConfig::embedded(&args.data_dir, args.bind, ports)).await?;
    let demo = kopilka::demo::seed(&suite, &args.data_dir).await?;
    let addrs = suite.addrs();

    println!();
    println!(
        "Kopilka is running on the embedded default (SQLite files in {}).",
        args.data_dir.display()
    );
    for (name, addr) in addrs.all() {
        println!("  {name:<8} {addr}");
    }
    println!();
    println!(
        "Demo merchant `{}`: store `{}`, terminal `{}`.",
        demo.merchant_id, demo.store_id, demo.terminal_id
    );
    if let Some((version, name)) = &demo.program {
        println!(
            "Active program: version {version}, `{name}` (rules-svc/programs/demo-cafe.yaml)."
        );
    }
    match &demo.keys {
        Some(keys) => {
            println!("Demo API keys (also in {}):", demo.keys_file.display());
            for line in keys.lines() {
                println!("  {line}");
            }
        }
        None => println!(
            "The demo keys were shown on the first start only ({} is gone); start afresh with an empty data directory to get new ones.",
            demo.keys_file.display()
        ),
    }
    println!();
    println!(
        "Health:  grpcurl -plaintext {} grpc.health.v1.Health/Check",
        addrs.gateway
    );
    println!("Stop with Ctrl-C.");

    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        signal.await;
        trigger.cancel();
    });
    suite.run_until(shutdown).await
}
