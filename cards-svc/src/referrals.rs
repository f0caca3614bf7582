//! Referral links (C7): a customer names the friend who brought them; the chain above a
//! customer is read up to the merchant's depth (3 by default), never with cycles or
//! self-referral.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use kopilka_proto::cards as pb;
use kopilka_proto::types::IdentifierInput;
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::Violations;
use kopilka_runtime::Timestamp;

use crate::cards::{next_token, page, timestamp, Cards, MerchantSettings, MAX_ID};
use crate::error::Error;
use crate::on_conn;
use crate::store::{CardsTx, CustomerRow};

/// How far up a chain is walked when checking for a cycle (links are made one at a time, each
/// checked, so a real chain never reaches this).
const MAX_WALK: usize = 10_000;

impl Cards {
    /// The referrers above `customer`, level 1 first, at most `depth`.
    pub(crate) async fn chain(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        customer: &str,
        depth: usize,
    ) -> Result<Vec<pb::ReferralLink>, Error> {
        let mut links = Vec::new();
        let mut seen = HashSet::from([customer.to_owned()]);
        let Some(mut current) = tx.customer(merchant, customer).await? else {
            return Ok(links);
        };
        while links.len() < depth && !current.referrer_id.is_empty() {
            let linked_at = current.referred_at;
            let Some(up) = tx.customer(merchant, &current.referrer_id).await? else {
                break;
            };
            if !seen.insert(up.customer_id.clone()) {
                break;
            }
            links.push(pb::ReferralLink {
                customer_id: up.customer_id.clone(),
                level: links.len() as u32 + 1,
                linked_at: linked_at.map(|t| timestamp(t.0)),
            });
            current = up;
        }
        Ok(links)
    }

    /// Whether `customer` is `ancestor` or one of its referrers, however far up.
    pub(crate) async fn descends_from(
        tx: &mut dyn CardsTx,
        merchant: &str,
        customer: &str,
        ancestor: &str,
    ) -> Result<bool, Error> {
        let mut current = customer.to_owned();
        for _ in 0..MAX_WALK {
            if current == ancestor {
                return Ok(true);
            }
            match tx.customer(merchant, &current).await? {
                Some(c) if !c.referrer_id.is_empty() => current = c.referrer_id,
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// The active customer an input names, or REFERRER_NOT_FOUND.
    pub(crate) async fn resolve_referrer(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        input: &IdentifierInput,
        s: &MerchantSettings,
    ) -> Result<CustomerRow, Error> {
        let hit = crate::identify::find(tx, merchant, Some(input), &s.formats, "referrer")
            .await
            .map_err(|e| match e {
                Error::Refused(r) if r.reason == "CARD_NOT_FOUND" => Refusal::not_found(
                    "REFERRER_NOT_FOUND",
                    "no customer has the referrer's phone or card",
                )
                .into(),
                e => e,
            })?;
        Ok(hit.customer)
    }

    pub(crate) async fn set_referrer(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::SetReferrerRequest,
        s: &MerchantSettings,
        now: DateTime<Utc>,
    ) -> Result<pb::SetReferrerResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        v.check()?;
        let input = r
            .referrer
            .as_ref()
            .ok_or_else(|| Error::invalid("referrer", "is required"))?;
        let mut customer = self.active_customer(tx, merchant, &r.customer_id).await?;
        let referrer = self.resolve_referrer(tx, merchant, input, s).await?;
        if referrer.customer_id == customer.customer_id {
            return Err(Refusal::precondition(
                "SELF_REFERRAL",
                "a customer cannot refer themselves",
            )
            .into());
        }
        if !customer.referrer_id.is_empty() {
            if customer.referrer_id == referrer.customer_id {
                let referrers = self
                    .chain(
                        tx,
                        merchant,
                        &customer.customer_id,
                        s.settings.referral_max_depth as usize,
                    )
                    .await?;
                return Ok(pb::SetReferrerResponse { referrers });
            }
            return Err(Refusal::precondition(
                "REFERRER_ALREADY_SET",
                "the customer already has a referrer",
            )
            .into());
        }
        // Refuse a link that would make the customer their own (indirect) referrer.
        if Self::descends_from(tx, merchant, &referrer.customer_id, &customer.customer_id).await? {
            return Err(Refusal::precondition(
                "REFERRAL_CYCLE",
                "the referrer was brought in by this customer (directly or further down)",
            )
            .into());
        }
        customer.referrer_id = referrer.customer_id.clone();
        customer.referred_at = Some(Timestamp(now));
        customer.version += 1;
        customer.updated_at = Timestamp(now);
        tx.update_customer(merchant, &customer).await?;
        let referrers = self
            .chain(
                tx,
                merchant,
                &customer.customer_id,
                s.settings.referral_max_depth as usize,
            )
            .await?;
        Ok(pb::SetReferrerResponse { referrers })
    }

    pub(crate) async fn get_referral_chain(
        &self,
        r: &pb::GetReferralChainRequest,
    ) -> Result<pb::GetReferralChainResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        if r.max_levels > 10 {
            v.add("max_levels", "must be 0 to 10");
        }
        v.check()?;
        let s = self.settings_for_read(&r.merchant_id).await?;
        let depth = if r.max_levels == 0 {
            s.settings.referral_max_depth
        } else {
            r.max_levels
        };
        on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            if conn.customer(&r.merchant_id, &r.customer_id).await?.is_none() {
                return Err(Error::customer_not_found(&r.customer_id));
            }
            let referrers = self.chain(conn, &r.merchant_id, &r.customer_id, depth as usize).await?;
            Ok(pb::GetReferralChainResponse { referrers })
        })
    }

    pub(crate) async fn list_referrals(
        &self,
        r: &pb::ListReferralsRequest,
    ) -> Result<pb::ListReferralsResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        if r.level > 10 {
            v.add("level", "must be 0 to 10");
        }
        let (limit, after) =
            page::<(DateTime<Utc>, String)>(r.page_size, &r.page_token, 50, 100, &mut v);
        v.check()?;
        let level = i64::from(r.level.max(1));
        on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            if conn.customer(&r.merchant_id, &r.customer_id).await?.is_none() {
                return Err(Error::customer_not_found(&r.customer_id));
            }
            let (rows, total) = conn.referrals(&r.merchant_id, &r.customer_id, level, limit, after.as_ref()).await?;
            Ok(pb::ListReferralsResponse {
                next_page_token: next_token(&rows, limit, |row| {
                    let at = row.referred_at.map_or(DateTime::<Utc>::UNIX_EPOCH, |t| t.0);
                    (at, row.customer_id.clone())
                }),
                referrals: rows
                    .into_iter()
                    .map(|row| pb::ReferralLink {
                        customer_id: row.customer_id,
                        level: level as u32,
                        linked_at: row.referred_at.map(|t| timestamp(t.0)),
                    })
                    .collect(),
                total_count: total as u64,
            })
        })
    }
}
