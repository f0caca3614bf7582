//! The gateway binary: configuration, telemetry, build, run. Everything else is in the library.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = gateway::Config::from_env()?;
    kopilka_runtime::telemetry::init(&config.telemetry);
    let service = gateway::build(config).await?;
    service
        .run_until(kopilka_runtime::shutdown::signal())
        .await?;
    Ok(())
}
