//! "Who is this?" — LookupCustomer, the checkout's hot path — and the identifier operations:
//! parse, add, list, block, unblock, replace a card.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use kopilka_proto::cards as pb;
use kopilka_proto::types::{self, event::Payload, IdentifierInput, IdentifierKind};
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::Violations;
use kopilka_runtime::Timestamp;
use tonic::Code;

use crate::cards::{
    check_customer_ref, check_len, event, Cards, MerchantSettings, ID_ACTIVE, ID_BLOCKED, MAX_ID,
};
use crate::error::Error;
use crate::identifiers::{self, Candidate, Formats, Parsed, MAX_RAW_CHARS};
use crate::on_conn;
use crate::store::{CardsTx, IdentifierRow, LookupHit};

/// Identifiers a customer may hold (blocked ones included).
const MAX_IDENTIFIERS: usize = 20;
/// Longest comment on a block.
const MAX_COMMENT: usize = 500;

/// Input longer than any identifier reads as is LIMIT_EXCEEDED on `<field>.raw` (as the gateway
/// reports it), not an unreadable identifier.
fn check_raw(input: &IdentifierInput, field: &str) -> Result<(), Error> {
    let mut v = Violations::new();
    check_len(&format!("{field}.raw"), &input.raw, MAX_RAW_CHARS, &mut v);
    Ok(v.check()?)
}

/// Reads `input` from `field` into the stored identifiers it may denote.
pub(crate) fn read(
    input: Option<&IdentifierInput>,
    formats: &Formats,
    field: &str,
) -> Result<Parsed, Error> {
    let input = input.ok_or_else(|| Error::invalid(field, "is required"))?;
    check_raw(input, field)?;
    identifiers::parse(input, formats).map_err(|e| Error::unreadable(format!("{field}.raw"), e))
}

/// The stored form of `input` (for attaching it to a customer).
pub(crate) fn storage_form(
    input: &IdentifierInput,
    formats: &Formats,
    field: &str,
) -> Result<Candidate, Error> {
    check_raw(input, field)?;
    identifiers::storage_form(input, formats)
        .map_err(|e| Error::unreadable(format!("{field}.raw"), e))
}

fn candidates(parsed: &Parsed) -> Vec<(i32, String)> {
    parsed
        .candidates
        .iter()
        .map(|c| (c.kind as i32, c.value.clone()))
        .collect()
}

/// The hit for the most likely candidate. Two candidates naming different customers are
/// IDENTIFIER_AMBIGUOUS; none is CARD_NOT_FOUND.
fn choose(parsed: &Parsed, mut hits: Vec<LookupHit>) -> Result<LookupHit, Error> {
    let position = |h: &LookupHit| {
        parsed
            .candidates
            .iter()
            .position(|c| c.kind as i32 == h.identifier.kind && c.value == h.identifier.value)
            .unwrap_or(usize::MAX)
    };
    hits.sort_by_key(position);
    let owners: BTreeSet<&str> = hits
        .iter()
        .map(|h| h.identifier.customer_id.as_str())
        .collect();
    if owners.len() > 1 {
        let mut kinds: Vec<&str> = Vec::new();
        for h in &hits {
            let kind = kind_name(h.identifier.kind);
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        return Err(Refusal::precondition(
            "IDENTIFIER_AMBIGUOUS",
            "the input fits identifiers of different customers; retry with a kind hint",
        )
        .with("kinds", kinds.join(","))
        .into());
    }
    hits.into_iter()
        .next()
        .ok_or_else(|| card_not_found(parsed))
}

/// The `IdentifierKind` value name of a stored kind, as ErrorInfo metadata names kinds.
fn kind_name(kind: i32) -> &'static str {
    IdentifierKind::try_from(kind)
        .unwrap_or_default()
        .as_str_name()
}

/// The `BlockReason` value name of a stored reason (events, ErrorInfo metadata).
fn block_reason_name(reason: i32) -> &'static str {
    pb::BlockReason::try_from(reason)
        .map(|r| r.as_str_name())
        .unwrap_or("BLOCK_REASON_OTHER")
}

/// CARD_NOT_FOUND: the kind the input was read as, and whether it reads as a phone a new
/// customer could register with.
fn card_not_found(parsed: &Parsed) -> Error {
    let phone = parsed
        .candidates
        .iter()
        .any(|c| c.kind == IdentifierKind::Phone);
    Refusal::not_found("CARD_NOT_FOUND", "no customer has this identifier")
        .with("kind", parsed.input_kind.as_str_name())
        .with("can_register", phone)
        .into()
}

/// CARD_BLOCKED: why, and whether a replacement card exists.
fn card_blocked(row: &IdentifierRow) -> Error {
    Refusal::precondition(
        "CARD_BLOCKED",
        format!("the card {} is blocked", row.proto().display),
    )
    .with("block_reason", block_reason_name(row.block_reason))
    .with("replaced", row.replaced_kind != 0)
    .into()
}

/// The stored identifier `parsed` names, or CARD_NOT_FOUND.
async fn lookup(tx: &mut dyn CardsTx, merchant: &str, parsed: &Parsed) -> Result<LookupHit, Error> {
    let hits = tx.lookup(merchant, &candidates(parsed)).await?;
    choose(parsed, hits)
}

/// The stored identifier `input` names, or CARD_NOT_FOUND.
pub(crate) async fn find(
    tx: &mut dyn CardsTx,
    merchant: &str,
    input: Option<&IdentifierInput>,
    formats: &Formats,
    field: &str,
) -> Result<LookupHit, Error> {
    let parsed = read(input, formats, field)?;
    lookup(tx, merchant, &parsed).await
}

impl Cards {
    pub(crate) async fn lookup_customer(
        &self,
        r: &pb::LookupCustomerRequest,
    ) -> Result<pb::LookupCustomerResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.check()?;
        let s = self.settings_for_read(&r.merchant_id).await?;
        let parsed = read(r.input.as_ref(), &s.formats, "input")?;
        on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            let hit = lookup(conn, &r.merchant_id, &parsed).await?;
            if hit.identifier.state == ID_BLOCKED {
                return Err(card_blocked(&hit.identifier));
            }
            let ids = conn.identifiers_of(&r.merchant_id, &hit.customer.customer_id).await?;
            let (assignment, tier) = self.tier_of(conn, &r.merchant_id, &hit.customer.customer_id, hit.customer.tier_seq, &hit.customer.tier_code, hit.tiers_version).await?;
            let chain = if r.include_referral_chain {
                self.chain(conn, &r.merchant_id, &hit.customer.customer_id, s.settings.referral_max_depth as usize).await?
                    .into_iter().map(|l| l.customer_id).collect()
            } else {
                vec![]
            };
            Ok(pb::LookupCustomerResponse {
                customer: Some(hit.customer.proto(&ids, assignment)?),
                tier,
                matched: Some(hit.identifier.proto()),
                input_kind: parsed.input_kind as i32,
                referrer_chain_customer_ids: chain,
            })
        })
    }

    pub(crate) async fn parse_identifier(
        &self,
        r: &pb::ParseIdentifierRequest,
    ) -> Result<pb::ParseIdentifierResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.check()?;
        let s = self.settings_for_read(&r.merchant_id).await?;
        let input = r
            .input
            .as_ref()
            .ok_or_else(|| Error::invalid("input", "is required"))?;
        let parsed = read(Some(input), &s.formats, "input")?;
        // As it would be stored; a bare number that reads only as a phone is not stored without
        // a hint, but a lookup matches it as that phone, so that is what it reads as.
        let stored = match storage_form(input, &s.formats, "input") {
            Ok(stored) => stored,
            Err(e) => parsed.candidates.first().cloned().ok_or(e)?,
        };
        Ok(pb::ParseIdentifierResponse {
            identifier: Some(identifiers::to_proto(&stored)),
            input_kind: parsed.input_kind as i32,
        })
    }

    /// Attaches `c` to `customer`: IDENTIFIER_TAKEN when another customer holds it; nothing to
    /// do when the customer already does.
    pub(crate) async fn attach(
        tx: &mut dyn CardsTx,
        merchant: &str,
        customer: &str,
        c: &Candidate,
        now: DateTime<Utc>,
    ) -> Result<IdentifierRow, Error> {
        let row = IdentifierRow {
            kind: c.kind as i32,
            value: c.value.clone(),
            customer_id: customer.to_owned(),
            state: ID_ACTIVE,
            block_reason: 0,
            block_comment: String::new(),
            added_at: Timestamp(now),
            blocked_at: None,
            replaced_kind: 0,
            replaced_value: String::new(),
        };
        if tx.insert_identifier(merchant, &row).await? {
            return Ok(row);
        }
        let existing = tx
            .identifier(merchant, row.kind, &row.value)
            .await?
            .ok_or(Error::Db(sqlx::Error::RowNotFound))?;
        if existing.customer_id == customer {
            Ok(existing)
        } else {
            Err(Refusal::new(
                Code::AlreadyExists,
                "IDENTIFIER_TAKEN",
                format!(
                    "{} belongs to another customer",
                    identifiers::display(c.kind, &c.value)
                ),
            )
            .with("kind", c.kind.as_str_name())
            .with("customer_id", existing.customer_id)
            .into())
        }
    }

    pub(crate) async fn add_identifier(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::AddIdentifierRequest,
        s: &MerchantSettings,
        now: DateTime<Utc>,
    ) -> Result<pb::AddIdentifierResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        v.check()?;
        let input = r
            .input
            .as_ref()
            .ok_or_else(|| Error::invalid("input", "is required"))?;
        let c = storage_form(input, &s.formats, "input")?;
        let customer = self.active_customer(tx, merchant, &r.customer_id).await?;
        let held = tx.identifiers_of(merchant, &customer.customer_id).await?;
        let same = |i: &&IdentifierRow| i.kind == c.kind as i32 && i.value == c.value;
        let has_card = held
            .iter()
            .any(|i| i.state == ID_ACTIVE && i.kind != IdentifierKind::Phone as i32 && !same(&i));
        if r.first_card_only && has_card {
            return Err(Error::collection_full(
                "cards",
                1,
                "the customer has a card already; only a first card may be attached this way",
            ));
        }
        if held.len() >= MAX_IDENTIFIERS && !held.iter().any(|i| same(&i)) {
            return Err(Error::collection_full(
                "identifiers",
                MAX_IDENTIFIERS,
                format!(
                    "the customer already has {MAX_IDENTIFIERS} identifiers (blocked ones \
                     included), the most a customer may have"
                ),
            ));
        }
        let record = Self::attach(tx, merchant, &customer.customer_id, &c, now).await?;
        Ok(pb::AddIdentifierResponse {
            record: Some(record.record()),
        })
    }

    pub(crate) async fn list_identifiers(
        &self,
        r: &pb::ListIdentifiersRequest,
    ) -> Result<pb::ListIdentifiersResponse, Error> {
        check_customer_ref(&r.merchant_id, &r.customer_id)?;
        on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            if conn.customer(&r.merchant_id, &r.customer_id).await?.is_none() {
                return Err(Error::customer_not_found(&r.customer_id));
            }
            let rows = conn.identifiers_of(&r.merchant_id, &r.customer_id).await?;
            Ok(pb::ListIdentifiersResponse {
                records: rows
                    .iter()
                    .filter(|i| r.include_blocked || i.state == ID_ACTIVE)
                    .map(IdentifierRow::record)
                    .collect(),
            })
        })
    }

    /// Blocks `row` (no-op when blocked already) and writes a CardBlocked event.
    #[allow(clippy::too_many_arguments)]
    async fn block(
        tx: &mut dyn CardsTx,
        merchant: &str,
        correlation: &str,
        row: &mut IdentifierRow,
        reason: i32,
        comment: &str,
        replaced_by: Option<&Candidate>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let newly = row.state != ID_BLOCKED;
        if newly {
            row.state = ID_BLOCKED;
            row.block_reason = reason;
            row.block_comment = comment.to_owned();
            row.blocked_at = Some(Timestamp(now));
        }
        if let Some(c) = replaced_by {
            row.replaced_kind = c.kind as i32;
            row.replaced_value = c.value.clone();
        }
        tx.update_identifier(merchant, row).await?;
        if newly || replaced_by.is_some() {
            let payload = Payload::CardBlocked(types::CardBlocked {
                identifier: Some(row.proto()),
                reason: block_reason_name(reason).to_owned(),
                replaced: replaced_by.is_some(),
            });
            tx.insert_events(
                merchant,
                &[event(merchant, &row.customer_id, correlation, payload, now)],
                now,
            )
            .await?;
        }
        Ok(())
    }

    pub(crate) async fn block_identifier(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        request_id: &str,
        r: &pb::BlockIdentifierRequest,
        s: &MerchantSettings,
        now: DateTime<Utc>,
    ) -> Result<pb::BlockIdentifierResponse, Error> {
        let mut v = Violations::new();
        if r.reason == 0 || pb::BlockReason::try_from(r.reason).is_err() {
            v.add("reason", "is required");
        }
        check_len("comment", &r.comment, MAX_COMMENT, &mut v);
        v.id("customer_id", &r.customer_id, MAX_ID, false);
        v.check()?;
        let parsed = read(r.input.as_ref(), &s.formats, "input")?;
        let hit = lookup(tx, merchant, &parsed).await?;
        if !r.customer_id.is_empty() && hit.identifier.customer_id != r.customer_id {
            return Err(card_not_found(&parsed));
        }
        let mut row = hit.identifier;
        Self::block(
            tx, merchant, request_id, &mut row, r.reason, &r.comment, None, now,
        )
        .await?;
        Ok(pb::BlockIdentifierResponse {
            record: Some(row.record()),
        })
    }

    pub(crate) async fn unblock_identifier(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::UnblockIdentifierRequest,
        s: &MerchantSettings,
    ) -> Result<pb::UnblockIdentifierResponse, Error> {
        let mut row = find(tx, merchant, r.input.as_ref(), &s.formats, "input")
            .await?
            .identifier;
        if row.state == ID_BLOCKED {
            row.state = ID_ACTIVE;
            row.block_reason = 0;
            row.block_comment.clear();
            row.blocked_at = None;
            tx.update_identifier(merchant, &row).await?;
        }
        Ok(pb::UnblockIdentifierResponse {
            record: Some(row.record()),
        })
    }

    pub(crate) async fn replace_card(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        request_id: &str,
        r: &pb::ReplaceCardRequest,
        s: &MerchantSettings,
        now: DateTime<Utc>,
    ) -> Result<pb::ReplaceCardResponse, Error> {
        let mut v = Violations::new();
        check_len("comment", &r.comment, MAX_COMMENT, &mut v);
        v.enumeration::<pb::BlockReason>("reason", r.reason);
        v.check()?;
        let new_input = r
            .new_card
            .as_ref()
            .ok_or_else(|| Error::invalid("new_card", "is required"))?;
        let new = storage_form(new_input, &s.formats, "new_card")?;
        let hit = find(tx, merchant, r.old_card.as_ref(), &s.formats, "old_card").await?;
        let mut old = hit.identifier;
        if old.kind == new.kind as i32 && old.value == new.value {
            return Err(Error::invalid("new_card", "must differ from the old card"));
        }
        let customer = self.active_customer(tx, merchant, &old.customer_id).await?;
        let added = Self::attach(tx, merchant, &customer.customer_id, &new, now).await?;
        let reason = if r.reason == 0 {
            pb::BlockReason::Lost as i32
        } else {
            r.reason
        };
        Self::block(
            tx,
            merchant,
            request_id,
            &mut old,
            reason,
            &r.comment,
            Some(&new),
            now,
        )
        .await?;
        Ok(pb::ReplaceCardResponse {
            customer_id: customer.customer_id,
            old_card: Some(old.record()),
            new_card: Some(added.record()),
        })
    }
}
