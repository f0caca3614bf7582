//! Tiers (C8): the merchant's definitions, each customer's assignment with its history, and
//! reading both through the tier cache (see [`crate::cache`] for why entries are never stale).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use kopilka_proto::cards as pb;
use kopilka_proto::types::{self, event::Payload};
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::Violations;
use prost::Message;
use rust_decimal::Decimal;

use crate::cache::{assignment_key, tiers_key};
use crate::cards::{
    check_customer_ref, check_len, event, next_token, not_future, page, timestamp, Cards, MAX_ID,
};
use crate::error::Error;
use crate::on_conn;
use crate::store::CardsTx;

/// Tiers a merchant may define.
const MAX_TIERS: usize = 50;
/// Longest tier code, name, perk and description; the most perks of a tier.
const MAX_CODE: usize = 32;
const MAX_NAME: usize = 100;
const MAX_PERKS: usize = 20;
const MAX_PERK: usize = 200;
const MAX_DESCRIPTION: usize = 1000;
/// Longest reason and rule id of an assignment.
const MAX_REASON: usize = 500;
const MAX_RULE_ID: usize = 128;

fn tier_not_found(code: &str) -> Error {
    Refusal::not_found("TIER_NOT_FOUND", format!("tier `{code}` not found"))
        .with("tier_code", code)
        .into()
}

fn check_percent(field: &str, value: &str, v: &mut Violations) {
    if value.is_empty() {
        return;
    }
    match Decimal::from_str(value) {
        Ok(d) if d >= Decimal::ZERO && d <= Decimal::ONE_HUNDRED => {}
        _ => v.add(field, "must be a decimal from 0 to 100"),
    }
}

/// A tier code: 1 to 32 characters of A-Z, a-z, 0-9, _ and - (LIMIT_EXCEEDED when longer).
fn check_code(field: &str, code: &str, v: &mut Violations) {
    let charset = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if code.chars().count() > MAX_CODE {
        v.limit(field, MAX_CODE, "characters");
    } else if code.is_empty() || !code.chars().all(charset) {
        v.add(
            field,
            "must be 1 to 32 characters of A-Z, a-z, 0-9, _ and -",
        );
    }
}

fn validate_tier(t: &pb::Tier) -> Result<(), Error> {
    let mut v = Violations::new();
    check_code("tier.code", &t.code, &mut v);
    if t.name.is_empty() {
        v.add("tier.name", "is required");
    }
    check_len("tier.name", &t.name, MAX_NAME, &mut v);
    check_percent("tier.accrual_percent", &t.accrual_percent, &mut v);
    check_percent("tier.discount_percent", &t.discount_percent, &mut v);
    check_percent(
        "tier.max_redeem_share_percent",
        &t.max_redeem_share_percent,
        &mut v,
    );
    v.count("tier.perks", t.perks.len(), MAX_PERKS);
    for (i, p) in t.perks.iter().enumerate() {
        check_len(&format!("tier.perks[{i}]"), p, MAX_PERK, &mut v);
    }
    check_len("tier.description", &t.description, MAX_DESCRIPTION, &mut v);
    Ok(v.check()?)
}

/// TIER_RANK_TAKEN: ranks are unique per merchant and `holder` has `rank`.
fn rank_taken(rank: i32, holder: &str) -> Error {
    Refusal::precondition(
        "TIER_RANK_TAKEN",
        format!(
            "rank {rank} is already the rank of tier `{holder}`; give that tier another rank first"
        ),
    )
    .with("rank", rank)
    .with("tier_code", holder)
    .into()
}

impl Cards {
    /// A customer's current assignment (number `seq`) and the definition of `code`, read through
    /// the cache and filled from the database on a miss.
    pub(crate) async fn tier_of(
        &self,
        conn: &mut dyn CardsTx,
        merchant: &str,
        customer: &str,
        seq: i64,
        code: &str,
        tiers_version: i64,
    ) -> Result<(Option<pb::TierAssignment>, Option<pb::Tier>), Error> {
        if seq == 0 {
            return Ok((None, None));
        }
        let keys = [
            assignment_key(merchant, customer, seq),
            tiers_key(merchant, tiers_version),
        ];
        let cached = self.cache.get_many(&keys).await;
        let assignment = match &cached[0] {
            Some(bytes) => pb::TierAssignment::decode(bytes.as_slice())?,
            None => {
                let bytes = conn
                    .tier_assignment(merchant, customer, seq)
                    .await?
                    .unwrap_or_default();
                let a = pb::TierAssignment::decode(bytes.as_slice())?;
                self.cache.put(keys[0].clone(), bytes).await;
                a
            }
        };
        let tiers = match &cached[1] {
            Some(bytes) => pb::ListTiersResponse::decode(bytes.as_slice())?,
            None => {
                let list = self.tier_list(conn, merchant).await?;
                self.cache.put(keys[1].clone(), list.encode_to_vec()).await;
                list
            }
        };
        let tier = tiers.tiers.into_iter().find(|t| t.code == code);
        Ok((Some(assignment), tier))
    }

    async fn tier_list(
        &self,
        conn: &mut dyn CardsTx,
        merchant: &str,
    ) -> Result<pb::ListTiersResponse, Error> {
        let tiers = conn
            .tiers(merchant)
            .await?
            .iter()
            .map(|b| pb::Tier::decode(b.as_slice()))
            .collect::<Result<_, _>>()?;
        Ok(pb::ListTiersResponse { tiers })
    }

    /// The merchant's tiers through the cache.
    async fn cached_tiers(&self, merchant: &str) -> Result<pb::ListTiersResponse, Error> {
        on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            let version = conn.settings(merchant).await?.map_or(0, |s| s.tiers_version);
            let key = tiers_key(merchant, version);
            if let Some(bytes) = &self.cache.get_many(std::slice::from_ref(&key)).await[0] {
                return Ok(pb::ListTiersResponse::decode(bytes.as_slice())?);
            }
            let list = self.tier_list(conn, merchant).await?;
            self.cache.put(key, list.encode_to_vec()).await;
            Ok(list)
        })
    }

    pub(crate) async fn list_tiers(
        &self,
        r: &pb::ListTiersRequest,
    ) -> Result<pb::ListTiersResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.check()?;
        self.cached_tiers(&r.merchant_id).await
    }

    pub(crate) async fn get_tier(
        &self,
        r: &pb::GetTierRequest,
    ) -> Result<pb::GetTierResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.id("code", &r.code, MAX_ID, true);
        v.check()?;
        let tier = self
            .cached_tiers(&r.merchant_id)
            .await?
            .tiers
            .into_iter()
            .find(|t| t.code == r.code)
            .ok_or_else(|| tier_not_found(&r.code))?;
        Ok(pb::GetTierResponse { tier: Some(tier) })
    }

    /// Bumps the definitions' version (a new cache name) and forgets the old entry.
    async fn tiers_changed(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let version = tx.bump_tiers_version(merchant, now).await?;
        self.cache.forget(tiers_key(merchant, version - 1)).await;
        Ok(())
    }

    pub(crate) async fn upsert_tier(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::UpsertTierRequest,
        now: DateTime<Utc>,
    ) -> Result<pb::UpsertTierResponse, Error> {
        let mut tier = r
            .tier
            .clone()
            .ok_or_else(|| Error::invalid("tier", "is required"))?;
        validate_tier(&tier)?;
        if let Some(other) = tx.tier_with_rank(merchant, tier.rank).await? {
            if other != tier.code {
                return Err(rank_taken(tier.rank, &other));
            }
        }
        let existing = self.tier_list(tx, merchant).await?.tiers;
        if existing.len() >= MAX_TIERS && !existing.iter().any(|t| t.code == tier.code) {
            return Err(Error::collection_full(
                "tiers",
                MAX_TIERS,
                format!("the merchant already has {MAX_TIERS} tiers, the most a merchant may have"),
            ));
        }
        if tier.is_default {
            for mut other in existing
                .into_iter()
                .filter(|t| t.is_default && t.code != tier.code)
            {
                other.is_default = false;
                other.updated_at = Some(timestamp(now));
                tx.put_tier(
                    merchant,
                    &other.code,
                    other.rank,
                    &other.encode_to_vec(),
                    now,
                )
                .await?;
            }
        }
        tier.updated_at = Some(timestamp(now));
        let created = tx
            .put_tier(merchant, &tier.code, tier.rank, &tier.encode_to_vec(), now)
            .await?;
        self.tiers_changed(tx, merchant, now).await?;
        Ok(pb::UpsertTierResponse {
            tier: Some(tier),
            created,
        })
    }

    pub(crate) async fn delete_tier(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::DeleteTierRequest,
        now: DateTime<Utc>,
    ) -> Result<pb::DeleteTierResponse, Error> {
        let mut v = Violations::new();
        v.id("code", &r.code, MAX_ID, true);
        v.check()?;
        if tx.tier(merchant, &r.code).await?.is_none() {
            return Err(tier_not_found(&r.code));
        }
        let holders = tx.customers_with_tier(merchant, &r.code).await?;
        if holders > 0 {
            return Err(Refusal::precondition(
                "TIER_IN_USE",
                format!(
                    "{holders} customers hold tier `{}`; move them first",
                    r.code
                ),
            )
            .with("tier_code", &r.code)
            .into());
        }
        tx.delete_tier(merchant, &r.code).await?;
        self.tiers_changed(tx, merchant, now).await?;
        Ok(pb::DeleteTierResponse {
            code: r.code.clone(),
        })
    }

    /// Records a new current assignment of `tier` for the locked `customer` row and writes the
    /// TierChanged event; returns it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record_assignment(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        correlation: &str,
        customer: &mut crate::store::CustomerRow,
        previous: Option<&pb::TierAssignment>,
        mut assignment: pb::TierAssignment,
        previous_rank: Option<i32>,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<pb::TierAssignment, Error> {
        assignment.customer_id = customer.customer_id.clone();
        assignment.previous_tier_code = previous.map(|p| p.tier_code.clone()).unwrap_or_default();
        assignment.assigned_at = Some(timestamp(at));
        let old_seq = customer.tier_seq;
        customer.tier_seq += 1;
        customer.tier_code = assignment.tier_code.clone();
        customer.version += 1;
        customer.updated_at = kopilka_runtime::Timestamp(now);
        tx.insert_tier_history(
            merchant,
            &customer.customer_id,
            customer.tier_seq,
            &assignment.encode_to_vec(),
            at,
        )
        .await?;
        tx.update_customer(merchant, customer).await?;
        if assignment.previous_tier_code != assignment.tier_code {
            // A first tier counts as up.
            let direction = match previous_rank {
                Some(rank) if assignment.tier_rank < rank => types::TierChangeDirection::Down,
                Some(rank) if assignment.tier_rank == rank => {
                    types::TierChangeDirection::Unspecified
                }
                _ => types::TierChangeDirection::Up,
            };
            let payload = Payload::TierChanged(types::TierChanged {
                previous_tier_code: assignment.previous_tier_code.clone(),
                tier_code: assignment.tier_code.clone(),
                direction: direction as i32,
                source: pb::TierSource::try_from(assignment.source)
                    .map(|s| s.as_str_name().to_owned())
                    .unwrap_or_default(),
                reason: assignment.reason.clone(),
                rule_id: assignment.rule_id.clone(),
                program_version: assignment.program_version,
            });
            tx.insert_events(
                merchant,
                &[event(
                    merchant,
                    &customer.customer_id,
                    correlation,
                    payload,
                    now,
                )],
                now,
            )
            .await?;
        }
        if old_seq > 0 {
            self.cache
                .forget(assignment_key(merchant, &customer.customer_id, old_seq))
                .await;
        }
        Ok(assignment)
    }

    pub(crate) async fn assign_tier(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        request_id: &str,
        r: &pb::AssignTierRequest,
        now: DateTime<Utc>,
    ) -> Result<pb::AssignTierResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        v.id("tier_code", &r.tier_code, MAX_ID, true);
        let source = pb::TierSource::try_from(r.source).unwrap_or(pb::TierSource::Unspecified);
        if source == pb::TierSource::Unspecified {
            v.add("source", "is required");
        }
        if source == pb::TierSource::Manual && r.reason.trim().is_empty() {
            v.add("reason", "is required for a manual assignment");
        }
        check_len("reason", &r.reason, MAX_REASON, &mut v);
        check_len("rule_id", &r.rule_id, MAX_RULE_ID, &mut v);
        let at = match &r.effective_at {
            Some(t) => not_future("effective_at", t, now, &mut v).unwrap_or(now),
            None => now,
        };
        v.check()?;
        let mut customer = self.active_customer(tx, merchant, &r.customer_id).await?;
        let tier = tx
            .tier(merchant, &r.tier_code)
            .await?
            .map(|b| pb::Tier::decode(b.as_slice()))
            .transpose()?
            .ok_or_else(|| tier_not_found(&r.tier_code))?;
        let current = match customer.tier_seq {
            0 => None,
            seq => tx
                .tier_assignment(merchant, &customer.customer_id, seq)
                .await?
                .map(|b| pb::TierAssignment::decode(b.as_slice()))
                .transpose()?,
        };
        let locked_now = current.as_ref().is_some_and(|c| c.locked);
        let lock = if source == pb::TierSource::Manual {
            r.lock
        } else {
            locked_now
        };
        if let Some(c) = &current {
            let ignored = source == pb::TierSource::Rule && c.locked;
            let same = c.tier_code == r.tier_code && c.locked == lock;
            if ignored || same {
                return Ok(pb::AssignTierResponse {
                    assignment: current,
                    changed: false,
                });
            }
        }
        let previous_rank = current.as_ref().map(|c| c.tier_rank);
        let assignment = pb::TierAssignment {
            tier_code: tier.code.clone(),
            tier_name: tier.name.clone(),
            tier_rank: tier.rank,
            source: source as i32,
            reason: r.reason.clone(),
            rule_id: r.rule_id.clone(),
            program_version: r.program_version,
            locked: lock,
            ..Default::default()
        };
        let assignment = self
            .record_assignment(
                tx,
                merchant,
                request_id,
                &mut customer,
                current.as_ref(),
                assignment,
                previous_rank,
                at,
                now,
            )
            .await?;
        Ok(pb::AssignTierResponse {
            assignment: Some(assignment),
            changed: true,
        })
    }

    pub(crate) async fn get_customer_tier(
        &self,
        r: &pb::GetCustomerTierRequest,
    ) -> Result<pb::GetCustomerTierResponse, Error> {
        check_customer_ref(&r.merchant_id, &r.customer_id)?;
        on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            let c = conn
                .customer(&r.merchant_id, &r.customer_id)
                .await?
                .ok_or_else(|| Error::customer_not_found(&r.customer_id))?;
            let version = conn.settings(&r.merchant_id).await?.map_or(0, |s| s.tiers_version);
            let (assignment, tier) = self
                .tier_of(conn, &r.merchant_id, &c.customer_id, c.tier_seq, &c.tier_code, version)
                .await?;
            Ok(pb::GetCustomerTierResponse { assignment, tier })
        })
    }

    pub(crate) async fn tier_history(
        &self,
        r: &pb::GetTierHistoryRequest,
    ) -> Result<pb::GetTierHistoryResponse, Error> {
        check_customer_ref(&r.merchant_id, &r.customer_id)?;
        let mut v = Violations::new();
        let (limit, before) = page::<i64>(r.page_size, &r.page_token, 50, 100, &mut v);
        v.check()?;
        on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            if conn.customer(&r.merchant_id, &r.customer_id).await?.is_none() {
                return Err(Error::customer_not_found(&r.customer_id));
            }
            let rows = conn.tier_history(&r.merchant_id, &r.customer_id, limit, before).await?;
            let assignments = rows
                .iter()
                .map(|(_, b)| pb::TierAssignment::decode(b.as_slice()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(pb::GetTierHistoryResponse {
                next_page_token: next_token(&rows, limit, |(seq, _)| *seq),
                assignments,
            })
        })
    }

    /// The merchant's default tier, if one is marked.
    pub(crate) async fn default_tier(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
    ) -> Result<Option<pb::Tier>, Error> {
        Ok(self
            .tier_list(tx, merchant)
            .await?
            .tiers
            .into_iter()
            .find(|t| t.is_default))
    }
}
