//! The monthly tier recalculation (R13): on the night of the 1st (in each merchant's time zone)
//! every customer's tier is decided again from the windows the program reads (e.g. the last 6
//! months' turnover), so a customer whose spending dropped moves down and one whose spending
//! grew moves up.
//!
//! Safe with several replicas: each run is a row of `job_runs` keyed by (job, month, merchant).
//! The replica whose `INSERT … ON CONFLICT DO NOTHING` inserts the row runs it; the others skip.
//! A claim left unfinished for an hour (its replica died) may be taken over. Every tier change
//! is an AssignTier whose request id is derived from (month, customer), so a run repeated after
//! a crash changes nothing twice.
//!
//! For each merchant due: rules ProgramService.GetActiveVersion (the lookbacks the program
//! reads), then per customer (cards ListCustomers, in pages) ledger GetAccountSnapshot with
//! those lookbacks, rules DecideTier (trigger RECALCULATION) and, for UPGRADE / DOWNGRADE, cards
//! TierService.AssignTier (source RULE, with the decision's rule id, version and reason).

use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use kopilka_proto::cards;
use kopilka_proto::ledger;
use kopilka_proto::rules::{self, TierDecision, TierTrigger};
use kopilka_runtime::{timestamps, with_db, Db, Timestamp};

use crate::deps::{self, Deadline, Retry};
use crate::error::{Error, Result};
use crate::tenancy::Merchant;
use crate::{dep_call, Gateway};

/// The job's name in `job_runs`.
pub const JOB: &str = "tier_recalculation";
/// An unfinished claim older than this may be taken over by another replica.
pub const STALE_CLAIM: chrono::Duration = chrono::Duration::hours(1);
/// Customers read per ListCustomers page.
const PAGE_SIZE: i32 = 500;

/// What one [`run_due`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    /// The merchants this replica ran the recalculation for.
    pub runs: Vec<MerchantRun>,
    /// Merchants whose run for their current month was claimed already (here or elsewhere).
    pub already_claimed: usize,
}

/// One merchant's recalculation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerchantRun {
    pub merchant_id: String,
    /// `YYYY-MM` in the merchant's time zone.
    pub period: String,
    /// Customers decided.
    pub customers: u64,
    pub upgraded: u64,
    pub downgraded: u64,
    /// Customers whose decision or assignment was refused (e.g. merged meanwhile).
    pub failed: u64,
    /// What was recorded in `job_runs.outcome`.
    pub outcome: String,
    /// False if the run stopped early (a dependency was down); it is retried once the claim
    /// is stale.
    pub finished: bool,
}

/// The month a merchant is in at `now` (`YYYY-MM`, local time). An unknown zone counts as UTC.
pub fn period_of(merchant: &Merchant, now: DateTime<Utc>) -> String {
    let tz: Tz = merchant.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let local = now.with_timezone(&tz);
    format!("{:04}-{:02}", local.year(), local.month())
}

/// Runs the recalculation for every merchant whose current month (local time; a month starts on
/// the 1st at 00:00) has no claimed run yet, as replica `replica`.
pub async fn run_due(gw: &Gateway, now: DateTime<Utc>, replica: &str) -> Result<JobReport> {
    let runs = JobRuns::new(gw.tenancy.db().clone());
    let mut report = JobReport::default();
    for merchant in gw.tenancy.merchants().await? {
        let period = period_of(&merchant, now);
        if !runs
            .claim(JOB, &period, &merchant.merchant_id, replica, now)
            .await?
        {
            report.already_claimed += 1;
            continue;
        }
        let mut run = MerchantRun {
            merchant_id: merchant.merchant_id.clone(),
            period: period.clone(),
            ..Default::default()
        };
        match recalculate(gw, &merchant.merchant_id, &period, now, &mut run).await {
            Ok(note) => {
                run.outcome = format!(
                    "ok: {} customers, {} up, {} down, {} failed{note}",
                    run.customers, run.upgraded, run.downgraded, run.failed
                );
                run.finished = true;
                runs.finish(
                    JOB,
                    &period,
                    &merchant.merchant_id,
                    replica,
                    Utc::now(),
                    &run.outcome,
                )
                .await?;
                tracing::info!(
                    merchant_id = %merchant.merchant_id,
                    period,
                    outcome = %run.outcome,
                    "tier recalculation done"
                );
            }
            Err(error) => {
                // Left unfinished: another attempt takes the claim over once it is stale.
                run.outcome = format!("stopped after {} customers: {error}", run.customers);
                runs.note(JOB, &period, &merchant.merchant_id, replica, &run.outcome)
                    .await?;
                tracing::warn!(
                    merchant_id = %merchant.merchant_id,
                    period,
                    %error,
                    "tier recalculation stopped; it is retried when the claim is stale"
                );
            }
        }
        report.runs.push(run);
    }
    Ok(report)
}

/// Checks every `interval` whether a month has started for some merchant and runs it. The
/// first check comes after one interval, once the service is up.
pub async fn run_forever(gw: Gateway, interval: Duration, replica: String) {
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + interval,
        interval.max(Duration::from_secs(1)),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(error) = run_due(&gw, Utc::now(), &replica).await {
            tracing::warn!(%error, "tier recalculation check failed");
        }
    }
}

/// A replica id: the host name (Kubernetes pod name) and a random suffix.
pub fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".to_owned());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// One merchant's run; returns a note for the outcome.
async fn recalculate(
    gw: &Gateway,
    merchant: &str,
    period: &str,
    now: DateTime<Utc>,
    run: &mut MerchantRun,
) -> Result<String> {
    let at = timestamps::to_proto(now);
    let active = dep_call!(
        gw,
        deps::RULES,
        Deadline::none(),
        Retry::Idempotent,
        programs.get_active_version(rules::GetActiveVersionRequest {
            merchant_id: merchant.to_owned(),
            at: Some(at),
            include_program: false,
        })
    );
    let version = match active {
        Ok(a) => a.version.unwrap_or_default(),
        Err(e) if e.reason().as_deref() == Some("NO_ACTIVE_PROGRAM") => {
            return Ok(", no active program".to_owned())
        }
        Err(e) => return Err(e),
    };
    let needs = version.needs.clone().unwrap_or_default();
    if needs.tier_codes.is_empty() {
        return Ok(", the program has no tiers".to_owned());
    }
    let mut page_token = String::new();
    loop {
        let page = dep_call!(
            gw,
            deps::CARDS,
            Deadline::none(),
            Retry::Idempotent,
            customers.list_customers(cards::ListCustomersRequest {
                merchant_id: merchant.to_owned(),
                filter: None,
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            })
        )?;
        for customer in &page.customers {
            match decide_one(gw, merchant, period, now, version.version, &needs, customer).await {
                Ok(Some(TierDecision::Upgrade)) => run.upgraded += 1,
                Ok(Some(_)) => run.downgraded += 1,
                Ok(None) => {}
                Err(error @ Error::Dependency { .. }) => return Err(error),
                Err(error) => {
                    run.failed += 1;
                    tracing::warn!(
                        merchant_id = merchant,
                        customer_id = %customer.customer_id,
                        %error,
                        "tier recalculation refused for a customer"
                    );
                }
            }
            run.customers += 1;
        }
        if page.next_page_token.is_empty() {
            return Ok(String::new());
        }
        page_token = page.next_page_token;
    }
}

/// Decides one customer's tier and records a change; the change made, if any.
async fn decide_one(
    gw: &Gateway,
    merchant: &str,
    period: &str,
    now: DateTime<Utc>,
    version: u64,
    needs: &rules::EvaluationNeeds,
    customer: &cards::Customer,
) -> Result<Option<TierDecision>> {
    let at = timestamps::to_proto(now);
    let snapshot = dep_call!(
        gw,
        deps::LEDGER,
        Deadline::none(),
        Retry::Idempotent,
        ledger.get_account_snapshot(ledger::GetAccountSnapshotRequest {
            merchant_id: merchant.to_owned(),
            customer_id: customer.customer_id.clone(),
            lookbacks: needs.lookbacks.clone(),
            as_of: Some(at),
            expiring_within: None,
        })
    )?;
    let assignment = customer.tier.clone().unwrap_or_default();
    let context = rules::CustomerContext {
        customer_id: customer.customer_id.clone(),
        tier: (!assignment.tier_code.is_empty()).then(|| rules::CustomerTier {
            code: assignment.tier_code.clone(),
            rank: assignment.tier_rank,
            ..Default::default()
        }),
        tier_locked: assignment.locked,
        birth_date: customer.profile.as_ref().and_then(|p| p.birth_date),
        registered_at: customer.registered_at,
        aggregates: snapshot.aggregates,
        ..Default::default()
    };
    let decided = dep_call!(
        gw,
        deps::RULES,
        Deadline::none(),
        Retry::Idempotent,
        evaluation.decide_tier(rules::DecideTierRequest {
            merchant_id: merchant.to_owned(),
            program: Some(rules::ProgramRef {
                source: Some(rules::program_ref::Source::Version(version)),
            }),
            customer: Some(context),
            trigger: TierTrigger::Recalculation as i32,
            purchase_amount: String::new(),
            decided_at: Some(at),
        })
    )?;
    let decision = TierDecision::try_from(decided.decision).unwrap_or(TierDecision::Unspecified);
    if !matches!(decision, TierDecision::Upgrade | TierDecision::Downgrade)
        || decided.tier_code.is_empty()
        || decided.tier_code == assignment.tier_code
    {
        return Ok(None);
    }
    let assigned = dep_call!(
        gw,
        deps::CARDS,
        Deadline::none(),
        Retry::Idempotent,
        tiers.assign_tier(cards::AssignTierRequest {
            merchant_id: merchant.to_owned(),
            request_id: crate::idempotency::derived("tier-job", &[period, &customer.customer_id]),
            customer_id: customer.customer_id.clone(),
            tier_code: decided.tier_code.clone(),
            source: cards::TierSource::Rule as i32,
            reason: decided.reason.clone(),
            rule_id: decided.rule_id.clone(),
            program_version: decided.program_version,
            lock: false,
            effective_at: None,
        })
    );
    match assigned {
        Ok(a) if a.changed => Ok(Some(decision)),
        Ok(_) => Ok(None),
        // This month's assignment was made by an earlier attempt of the same run.
        Err(e) if e.reason().as_deref() == Some("IDEMPOTENCY_KEY_REUSED") => Ok(None),
        Err(e) => Err(e),
    }
}

// ---- job_runs -------------------------------------------------------------------------------------

/// Claims of scheduled jobs (table `job_runs`), one row per (job, period, merchant).
#[derive(Debug, Clone)]
pub struct JobRuns {
    db: Db,
}

impl JobRuns {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Claims (job, period, merchant) for `replica`: true if this replica inserted the row, or
    /// took over a claim unfinished for longer than [`STALE_CLAIM`].
    pub async fn claim(
        &self,
        job: &str,
        period: &str,
        merchant_id: &str,
        replica: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let inserted = with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO job_runs (job, period, merchant_id, claimed_by, claimed_at, finished_at, outcome)
             VALUES ($1, $2, $3, $4, $5, NULL, '')
             ON CONFLICT (job, period, merchant_id) DO NOTHING",
        )
        .bind(job)
        .bind(period)
        .bind(merchant_id)
        .bind(replica)
        .bind(Timestamp::from(now))
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 1 {
            return Ok(true);
        }
        let taken_over = with_db!(&self.db, pool => sqlx::query(
            "UPDATE job_runs SET claimed_by = $4, claimed_at = $5
             WHERE job = $1 AND period = $2 AND merchant_id = $3
               AND finished_at IS NULL AND claimed_at < $6",
        )
        .bind(job)
        .bind(period)
        .bind(merchant_id)
        .bind(replica)
        .bind(Timestamp::from(now))
        .bind(Timestamp::from(now - STALE_CLAIM))
        .execute(pool)
        .await?
        .rows_affected());
        Ok(taken_over == 1)
    }

    /// Marks a claimed run finished with its outcome.
    pub async fn finish(
        &self,
        job: &str,
        period: &str,
        merchant_id: &str,
        replica: &str,
        at: DateTime<Utc>,
        outcome: &str,
    ) -> Result<(), sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query(
            "UPDATE job_runs SET finished_at = $5, outcome = $6
             WHERE job = $1 AND period = $2 AND merchant_id = $3 AND claimed_by = $4",
        )
        .bind(job)
        .bind(period)
        .bind(merchant_id)
        .bind(replica)
        .bind(Timestamp::from(at))
        .bind(truncate(outcome))
        .execute(pool)
        .await
        .map(|_| ()))
    }

    /// Records why a claimed run stopped, leaving it unfinished.
    pub async fn note(
        &self,
        job: &str,
        period: &str,
        merchant_id: &str,
        replica: &str,
        outcome: &str,
    ) -> Result<(), sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query(
            "UPDATE job_runs SET outcome = $5
             WHERE job = $1 AND period = $2 AND merchant_id = $3 AND claimed_by = $4",
        )
        .bind(job)
        .bind(period)
        .bind(merchant_id)
        .bind(replica)
        .bind(truncate(outcome))
        .execute(pool)
        .await
        .map(|_| ()))
    }

    /// The row of one run: (claimed_by, finished, outcome).
    pub async fn get(
        &self,
        job: &str,
        period: &str,
        merchant_id: &str,
    ) -> Result<Option<(String, bool, String)>, sqlx::Error> {
        let row: Option<(String, Option<Timestamp>, String)> = with_db!(&self.db, pool => sqlx::query_as(
            "SELECT claimed_by, finished_at, outcome FROM job_runs
             WHERE job = $1 AND period = $2 AND merchant_id = $3",
        )
        .bind(job)
        .bind(period)
        .bind(merchant_id)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(|(by, finished, outcome)| (by, finished.is_some(), outcome)))
    }
}

fn truncate(outcome: &str) -> String {
    outcome.chars().take(1000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merchant(tz: &str) -> Merchant {
        Merchant {
            merchant_id: "m".into(),
            name: "m".into(),
            currency: "RUB".into(),
            time_zone: tz.into(),
            phone_region: "RU".into(),
            created_at: Timestamp::now(),
        }
    }

    #[test]
    fn the_month_is_the_merchants_local_one() {
        // 31 May 22:30 UTC is already 1 June in Moscow (UTC+3), still May in UTC.
        let at = DateTime::parse_from_rfc3339("2025-05-31T22:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(period_of(&merchant("Europe/Moscow"), at), "2025-06");
        assert_eq!(period_of(&merchant("UTC"), at), "2025-05");
        assert_eq!(period_of(&merchant("America/New_York"), at), "2025-05");
        assert_eq!(period_of(&merchant("Not/AZone"), at), "2025-05");
    }

    async fn sqlite() -> (tempfile_dir::Dir, Db) {
        let dir = tempfile_dir::Dir::new();
        let url = format!("sqlite://{}/gw.db", dir.path());
        let db = Db::connect(&url, 4, crate::MIGRATIONS).await.unwrap();
        (dir, db)
    }

    /// A throw-away directory without a dev-dependency.
    mod tempfile_dir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!("gw-jobs-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> String {
                self.0.to_string_lossy().into_owned()
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[tokio::test]
    async fn one_claim_per_period_and_stale_claims_are_taken_over() {
        let (_dir, db) = sqlite().await;
        let runs = JobRuns::new(db);
        let now = Utc::now();
        assert!(runs.claim(JOB, "2025-06", "m", "a", now).await.unwrap());
        assert!(!runs.claim(JOB, "2025-06", "m", "b", now).await.unwrap());
        // Another merchant or month is another run.
        assert!(runs.claim(JOB, "2025-06", "m2", "b", now).await.unwrap());
        assert!(runs.claim(JOB, "2025-07", "m", "b", now).await.unwrap());
        // Unfinished for over an hour: taken over once.
        let later = now + STALE_CLAIM + chrono::Duration::minutes(1);
        assert!(runs.claim(JOB, "2025-06", "m", "b", later).await.unwrap());
        assert!(!runs.claim(JOB, "2025-06", "m", "c", later).await.unwrap());
        runs.finish(JOB, "2025-06", "m", "b", later, "ok")
            .await
            .unwrap();
        let much_later = later + STALE_CLAIM * 2;
        assert!(!runs
            .claim(JOB, "2025-06", "m", "c", much_later)
            .await
            .unwrap());
        assert_eq!(
            runs.get(JOB, "2025-06", "m").await.unwrap(),
            Some(("b".to_owned(), true, "ok".to_owned()))
        );
    }
}
