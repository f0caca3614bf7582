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

use kopilka_proto::rules as rules_pb;
use kopilka_runtime::Timestamp;
use rules_svc::cache::{CacheSettings, ProgramCache};
use rules_svc::document::{self, DEMO_PROGRAM_YAML};
use rules_svc::error::Error as RulesError;
use rules_svc::programs::Programs;
use rules_svc::store::Store;

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
    // The same operations ProgramService runs; the serving rules-svc learns of the activation
    // from the change feed like any other replica would.
    let store = Store::new(suite.rules.db().clone());
    let cache = ProgramCache::new(store.clone(), CacheSettings::default());
    let program = seed_program(&Programs::new(store, cache, None), &tenant.merchant_id).await?;
    Ok(DemoSummary {
        program,
        merchant_id: tenant.merchant_id,
        store_id: tenant.store_id,
        terminal_id: tenant.terminal_id,
        keys_file,
        keys,
    })
}

/// Drafts, publishes and activates the demo program when the merchant has no version yet;
/// returns the active one. Fixed request ids make a start interrupted half-way resume.
async fn seed_program(
    programs: &Programs,
    merchant_id: &str,
) -> anyhow::Result<Option<(i64, String)>> {
    let existing = programs
        .list_versions(&rules_pb::ListVersionsRequest {
            merchant_id: merchant_id.to_owned(),
            page_size: 1,
            ..Default::default()
        })
        .await?;
    if existing.versions.is_empty() {
        let program = document::from_yaml(DEMO_PROGRAM_YAML).context("the demo program")?;
        let draft = programs
            .create_draft(&rules_pb::CreateDraftRequest {
                merchant_id: merchant_id.to_owned(),
                request_id: "demo-program-draft".to_owned(),
                source: Some(rules_pb::create_draft_request::Source::Program(program)),
                comment: "The demo café program".to_owned(),
                created_by: "kopilka dev".to_owned(),
            })
            .await?;
        let version = draft.version.map(|v| v.version).unwrap_or_default();
        programs
            .publish_version(&rules_pb::PublishVersionRequest {
                merchant_id: merchant_id.to_owned(),
                request_id: "demo-program-publish".to_owned(),
                version,
                ..Default::default()
            })
            .await
            .context("publishing the demo program")?;
        programs
            .activate_version(&rules_pb::ActivateVersionRequest {
                merchant_id: merchant_id.to_owned(),
                request_id: "demo-program-activate".to_owned(),
                version,
                activate_at: None,
                requested_by: "kopilka dev".to_owned(),
            })
            .await?;
    }
    let active = programs
        .get_active_version(&rules_pb::GetActiveVersionRequest {
            merchant_id: merchant_id.to_owned(),
            at: None,
            include_program: true,
        })
        .await;
    match active {
        Ok(answer) => Ok(answer.version.map(|v| {
            let name = v.program.map(|p| p.name).unwrap_or_default();
            (i64::try_from(v.version).unwrap_or_default(), name)
        })),
        Err(RulesError::Refused(r)) if r.reason == "NO_ACTIVE_PROGRAM" => Ok(None),
        Err(e) => Err(e.into()),
    }
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
