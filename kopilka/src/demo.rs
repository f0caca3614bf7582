//! The demo tenant of the embedded default: merchant, store, terminal, keys and program.
//!
//! Keys are shown once by design (only digests are stored), so on first start the embedded
//! default also writes them to `<data dir>/demo-keys.env` (readable by the owner only) and
//! prints them from there on later starts. Production never does this.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gateway::seed::{seed_demo, DemoTenant};
use gateway::tenancy::Tenancy;
use secrecy::ExposeSecret;

use kopilka_runtime::Timestamp;
use prost::Message;
use rules_svc::document::{self, DEMO_PROGRAM_YAML};
use rules_svc::store::Programs;

use crate::Suite;

/// What `kopilka dev` prints about the demo tenant.
pub struct DemoSummary {
    pub merchant_id: String,
    pub store_id: String,
    pub terminal_id: String,
    /// `KOPILKA_TERMINAL_KEY=…` and `KOPILKA_ADMIN_KEY=…` lines, when known.
    pub keys_file: PathBuf,
    pub keys: Option<String>,
    /// The active program's version and name.
    pub program: Option<(i64, String)>,
}

/// Seeds the demo tenant (first start only) and returns what to print.
pub async fn seed(suite: &Suite, data_dir: &Path) -> anyhow::Result<DemoSummary> {
    let now = Timestamp::now();
    let tenancy = Tenancy::new(suite.gateway.db().clone());
    let tenant = seed_demo(&tenancy, now)
        .await
        .context("seeding the demo tenant")?;
    let keys_file = data_dir.join("demo-keys.env");
    if let Some(contents) = keys_env(&tenant) {
        write_private(&keys_file, &contents)
            .with_context(|| format!("writing {}", keys_file.display()))?;
    }
    let keys = std::fs::read_to_string(&keys_file).ok();
    let program = seed_program(
        &Programs::new(suite.rules.db().clone()),
        &tenant.merchant_id,
        now,
    )
    .await?;
    Ok(DemoSummary {
        program,
        merchant_id: tenant.merchant_id,
        store_id: tenant.store_id,
        terminal_id: tenant.terminal_id,
        keys_file,
        keys,
    })
}

/// Publishes and activates the demo program when the merchant has none; returns the active one.
async fn seed_program(
    programs: &Programs,
    merchant_id: &str,
    now: Timestamp,
) -> anyhow::Result<Option<(i64, String)>> {
    if programs.count(merchant_id).await? == 0 {
        let program = document::from_yaml(DEMO_PROGRAM_YAML).context("the demo program")?;
        let version = programs
            .create_draft(merchant_id, &program.encode_to_vec(), now)
            .await?;
        programs.publish(merchant_id, version, now).await?;
        programs.activate(merchant_id, version, now, now).await?;
    }
    let Some(active) = programs.active_at(merchant_id, Timestamp::now()).await? else {
        return Ok(None);
    };
    let program = kopilka_proto::rules::Program::decode(active.document.as_slice())
        .context("decoding the active program")?;
    Ok(Some((active.version, program.name)))
}

fn keys_env(tenant: &DemoTenant) -> Option<String> {
    let terminal = tenant.terminal_key.as_ref()?;
    let admin = tenant.admin_key.as_ref()?;
    Some(format!(
        "KOPILKA_TERMINAL_KEY={}\nKOPILKA_ADMIN_KEY={}\n",
        terminal.expose_secret(),
        admin.expose_secret()
    ))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}
