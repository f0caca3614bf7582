//! `kopilka seed-demo` (hidden): the demo merchant, store, terminal and keys written straight
//! into a gateway database, for scripts that run the services as separate processes (the
//! benchmark). There is no public CreateMerchant, so this is how such a suite gets a tenant.
//! Prints `KOPILKA_TERMINAL_KEY=…` and `KOPILKA_ADMIN_KEY=…` (the keys are the point).

use anyhow::Context;
use clap::Args;
use gateway::seed::seed_demo;
use gateway::tenancy::Tenancy;
use kopilka_runtime::{Db, Timestamp};
use secrecy::ExposeSecret;

#[derive(Args, Debug)]
pub struct SeedArgs {
    /// The gateway's database (`postgres://…` or `sqlite://…`); migrated if needed.
    #[arg(long, env = "KOPILKA_GATEWAY_DATABASE_URL", hide_env_values = true)]
    pub gateway_database_url: String,
}

pub async fn run(args: SeedArgs) -> anyhow::Result<()> {
    let db = Db::connect(&args.gateway_database_url, 2, gateway::MIGRATIONS)
        .await
        .context("connecting to the gateway database")?;
    let tenant = seed_demo(&Tenancy::new(db), Timestamp::now())
        .await
        .context("seeding the demo tenant")?;
    match (&tenant.terminal_key, &tenant.admin_key) {
        (Some(terminal), Some(admin)) => {
            println!("KOPILKA_MERCHANT_ID={}", tenant.merchant_id);
            println!("KOPILKA_STORE_ID={}", tenant.store_id);
            println!("KOPILKA_TERMINAL_ID={}", tenant.terminal_id);
            println!("KOPILKA_TERMINAL_KEY={}", terminal.expose_secret());
            println!("KOPILKA_ADMIN_KEY={}", admin.expose_secret());
            Ok(())
        }
        _ => anyhow::bail!(
            "merchant `{}` exists already; its keys were shown when it was created",
            tenant.merchant_id
        ),
    }
}
