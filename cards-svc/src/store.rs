//! The only SQL of cards-svc. [`CardsTx`] is what an operation may do inside one database
//! transaction; a macro implements it for a PostgreSQL and a SQLite transaction, so each query
//! is written once. The dialects differ only in row locks (`FOR UPDATE` on PostgreSQL; SQLite's
//! `BEGIN IMMEDIATE` already serialises writers).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kopilka_runtime::Timestamp;
use sqlx::{Postgres, QueryBuilder, Sqlite};

/// How a request id was found (see ledger-svc: the same idempotency scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time: this transaction performs the operation.
    New,
    /// Done before: the operation, the request digest and the stored answer.
    Done {
        operation: String,
        request_hash: Vec<u8>,
        response: Vec<u8>,
    },
}

/// The merchant's settings row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsRow {
    pub settings: Vec<u8>,
    pub link_secret: Vec<u8>,
    pub tiers_version: i64,
}

/// A customer as stored; the documents are encoded protobuf.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CustomerRow {
    pub customer_id: String,
    pub state: i32,
    pub merged_into: String,
    pub external_id: Option<String>,
    pub phone: String,
    pub birth_month: i32,
    pub birth_day: i32,
    pub gender: i32,
    pub consent_mask: i32,
    pub referrer_id: String,
    pub referred_at: Option<Timestamp>,
    pub tier_code: String,
    pub tier_seq: i64,
    pub registered_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: i64,
    /// `kopilka.cards.v1.CustomerProfile`
    pub profile: Vec<u8>,
    /// `kopilka.cards.v1.SetConsentResponse` (the consents list)
    pub consents: Vec<u8>,
    /// `kopilka.cards.v1.RegistrationSource`
    pub registration: Vec<u8>,
}

const CUSTOMER_COLUMNS: &str = "customer_id, state, merged_into, external_id, phone, birth_month, birth_day, gender, consent_mask, referrer_id, referred_at, tier_code, tier_seq, registered_at, created_at, updated_at, version, profile, consents, registration";

/// An identifier as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdentifierRow {
    pub kind: i32,
    pub value: String,
    pub customer_id: String,
    pub state: i32,
    pub block_reason: i32,
    pub block_comment: String,
    pub added_at: Timestamp,
    pub blocked_at: Option<Timestamp>,
    pub replaced_kind: i32,
    pub replaced_value: String,
}

const IDENTIFIER_COLUMNS: &str = "kind, value, customer_id, state, block_reason, block_comment, added_at, blocked_at, replaced_kind, replaced_value";

/// A registration link as stored (the document without its token).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LinkRow {
    pub link_id: String,
    pub link: Vec<u8>,
    pub max_uses: i32,
    pub uses: i32,
    pub revoked: bool,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// One referred customer found below a referrer.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReferralRow {
    pub customer_id: String,
    pub referred_at: Option<Timestamp>,
}

/// Filters of [`CardsTx::list_customers`] (already validated).
#[derive(Debug, Clone, Default)]
pub struct CustomerQuery {
    pub customer_ids: Vec<String>,
    pub tier_codes: Vec<String>,
    pub registered_from: Option<DateTime<Utc>>,
    pub registered_to: Option<DateTime<Utc>>,
    /// Inclusive (month, day) range as month * 100 + day; `from > to` wraps over the new year.
    pub birthday: Option<(i32, i32)>,
    pub birth_month: i32,
    /// Bit of the consent channel that must be granted; 0 = any.
    pub consent_bit: i32,
    pub updated_since: Option<DateTime<Utc>>,
    pub genders: Vec<i32>,
    pub include_merged: bool,
    /// Keyset position: (created_at, customer_id) of the last row of the previous page.
    pub after: Option<(DateTime<Utc>, String)>,
    pub limit: i64,
}

/// The database work of one operation, inside one transaction.
#[async_trait]
pub trait CardsTx: Send {
    /// Registers `request_id` for this operation, or returns what it did before. Concurrent
    /// duplicates wait here for the first to commit.
    async fn claim_request(
        &mut self,
        merchant: &str,
        request_id: &str,
        operation: &str,
        hash: &[u8],
        now: DateTime<Utc>,
    ) -> sqlx::Result<Claim>;
    /// The operation and request digest `request_id` was claimed for, if it was (read-only).
    async fn claimed_request(
        &mut self,
        merchant: &str,
        request_id: &str,
    ) -> sqlx::Result<Option<(String, Vec<u8>)>>;
    /// Stores the answer of a claimed request.
    async fn finish_request(
        &mut self,
        merchant: &str,
        request_id: &str,
        response: &[u8],
    ) -> sqlx::Result<()>;
    async fn prune_idempotency(&mut self, before: DateTime<Utc>) -> sqlx::Result<u64>;

    async fn settings(&mut self, merchant: &str) -> sqlx::Result<Option<SettingsRow>>;
    /// Creates the settings row if missing (with these defaults), else leaves it.
    async fn ensure_settings(
        &mut self,
        merchant: &str,
        settings: &[u8],
        link_secret: &[u8],
        now: DateTime<Utc>,
    ) -> sqlx::Result<()>;
    async fn put_settings(
        &mut self,
        merchant: &str,
        settings: &[u8],
        now: DateTime<Utc>,
    ) -> sqlx::Result<()>;
    /// Bumps the version naming the cached tier definitions; returns the new one.
    async fn bump_tiers_version(&mut self, merchant: &str, now: DateTime<Utc>)
        -> sqlx::Result<i64>;

    async fn insert_customer(&mut self, merchant: &str, c: &CustomerRow) -> sqlx::Result<()>;
    async fn customer(&mut self, merchant: &str, id: &str) -> sqlx::Result<Option<CustomerRow>>;
    /// Like [`CardsTx::customer`], locking the row for this transaction.
    async fn lock_customer(
        &mut self,
        merchant: &str,
        id: &str,
    ) -> sqlx::Result<Option<CustomerRow>>;
    /// Writes every mutable column of the row (the caller bumps `version`).
    async fn update_customer(&mut self, merchant: &str, c: &CustomerRow) -> sqlx::Result<()>;
    async fn customer_by_external_id(
        &mut self,
        merchant: &str,
        external_id: &str,
    ) -> sqlx::Result<Option<String>>;
    async fn list_customers(
        &mut self,
        merchant: &str,
        q: &CustomerQuery,
    ) -> sqlx::Result<Vec<CustomerRow>>;
    /// Points the referrer links of `from`'s referrals at `to` (merge).
    async fn move_referrals(&mut self, merchant: &str, from: &str, to: &str) -> sqlx::Result<u64>;
    /// Customers referred by `referrer` exactly `level` steps below it, newest link first,
    /// after the (linked at, customer id) position `after`; and how many there are in all.
    async fn referrals(
        &mut self,
        merchant: &str,
        referrer: &str,
        level: i64,
        limit: i64,
        after: Option<&(DateTime<Utc>, String)>,
    ) -> sqlx::Result<(Vec<ReferralRow>, i64)>;

    /// Inserts the identifier unless (kind, value) exists; `false` when it does.
    async fn insert_identifier(&mut self, merchant: &str, i: &IdentifierRow) -> sqlx::Result<bool>;
    async fn identifier(
        &mut self,
        merchant: &str,
        kind: i32,
        value: &str,
    ) -> sqlx::Result<Option<IdentifierRow>>;
    /// All of a customer's identifiers, oldest first.
    async fn identifiers_of(
        &mut self,
        merchant: &str,
        customer: &str,
    ) -> sqlx::Result<Vec<IdentifierRow>>;
    async fn update_identifier(&mut self, merchant: &str, i: &IdentifierRow) -> sqlx::Result<()>;
    async fn delete_identifier(
        &mut self,
        merchant: &str,
        kind: i32,
        value: &str,
    ) -> sqlx::Result<()>;
    /// Moves every identifier of `from` to `to` (merge).
    async fn move_identifiers(&mut self, merchant: &str, from: &str, to: &str)
        -> sqlx::Result<u64>;
    /// The identifiers among `candidates` with their customers, in one statement (the hot path).
    async fn lookup(
        &mut self,
        merchant: &str,
        candidates: &[(i32, String)],
    ) -> sqlx::Result<Vec<LookupHit>>;

    /// Tier definitions (encoded `Tier`), lowest rank first.
    async fn tiers(&mut self, merchant: &str) -> sqlx::Result<Vec<Vec<u8>>>;
    async fn tier(&mut self, merchant: &str, code: &str) -> sqlx::Result<Option<Vec<u8>>>;
    /// The code of the tier holding `rank`, if any.
    async fn tier_with_rank(&mut self, merchant: &str, rank: i32) -> sqlx::Result<Option<String>>;
    async fn put_tier(
        &mut self,
        merchant: &str,
        code: &str,
        rank: i32,
        tier: &[u8],
        now: DateTime<Utc>,
    ) -> sqlx::Result<bool>;
    async fn delete_tier(&mut self, merchant: &str, code: &str) -> sqlx::Result<bool>;
    /// Active customers holding tier `code`.
    async fn customers_with_tier(&mut self, merchant: &str, code: &str) -> sqlx::Result<i64>;

    async fn insert_tier_history(
        &mut self,
        merchant: &str,
        customer: &str,
        seq: i64,
        assignment: &[u8],
        at: DateTime<Utc>,
    ) -> sqlx::Result<()>;
    async fn tier_assignment(
        &mut self,
        merchant: &str,
        customer: &str,
        seq: i64,
    ) -> sqlx::Result<Option<Vec<u8>>>;
    /// Assignments with their sequence numbers, newest first, older than `before` (a seq).
    async fn tier_history(
        &mut self,
        merchant: &str,
        customer: &str,
        limit: i64,
        before: Option<i64>,
    ) -> sqlx::Result<Vec<(i64, Vec<u8>)>>;

    async fn insert_link(&mut self, merchant: &str, l: &LinkRow) -> sqlx::Result<()>;
    async fn lock_link(&mut self, merchant: &str, link_id: &str) -> sqlx::Result<Option<LinkRow>>;
    async fn update_link(&mut self, merchant: &str, l: &LinkRow) -> sqlx::Result<()>;
    /// Links, newest first, after the (created at, link id) position `after`.
    async fn links(
        &mut self,
        merchant: &str,
        include_inactive: bool,
        now: DateTime<Utc>,
        limit: i64,
        after: Option<&(DateTime<Utc>, String)>,
    ) -> sqlx::Result<Vec<LinkRow>>;

    /// Appends encoded `kopilka.type.v1.Event`s to the outbox.
    async fn insert_events(
        &mut self,
        merchant: &str,
        events: &[(String, Vec<u8>)],
        now: DateTime<Utc>,
    ) -> sqlx::Result<()>;
}

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp(t)
}

macro_rules! impl_cards_tx {
    ($conn:ty, $db:ty, $for_update:expr) => {
        #[async_trait]
        impl CardsTx for $conn {
            async fn claim_request(&mut self, merchant: &str, request_id: &str, operation: &str, hash: &[u8], now: DateTime<Utc>) -> sqlx::Result<Claim> {
                let inserted = sqlx::query(
                    "INSERT INTO idempotency_keys (merchant_id, request_id, operation, request_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (merchant_id, request_id) DO NOTHING",
                )
                .bind(merchant).bind(request_id).bind(operation).bind(hash).bind(ts(now))
                .execute(&mut **self).await?.rows_affected();
                if inserted == 1 {
                    return Ok(Claim::New);
                }
                let (operation, request_hash, response): (String, Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(
                    "SELECT operation, request_hash, response FROM idempotency_keys WHERE merchant_id = $1 AND request_id = $2",
                )
                .bind(merchant).bind(request_id)
                .fetch_one(&mut **self).await?;
                Ok(Claim::Done { operation, request_hash, response: response.unwrap_or_default() })
            }

            async fn claimed_request(&mut self, merchant: &str, request_id: &str) -> sqlx::Result<Option<(String, Vec<u8>)>> {
                sqlx::query_as("SELECT operation, request_hash FROM idempotency_keys WHERE merchant_id = $1 AND request_id = $2")
                    .bind(merchant).bind(request_id)
                    .fetch_optional(&mut **self).await
            }

            async fn finish_request(&mut self, merchant: &str, request_id: &str, response: &[u8]) -> sqlx::Result<()> {
                sqlx::query("UPDATE idempotency_keys SET response = $3 WHERE merchant_id = $1 AND request_id = $2")
                    .bind(merchant).bind(request_id).bind(response)
                    .execute(&mut **self).await.map(|_| ())
            }

            async fn prune_idempotency(&mut self, before: DateTime<Utc>) -> sqlx::Result<u64> {
                Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                    .bind(ts(before)).execute(&mut **self).await?.rows_affected())
            }

            async fn settings(&mut self, merchant: &str) -> sqlx::Result<Option<SettingsRow>> {
                let row: Option<(Vec<u8>, Vec<u8>, i64)> = sqlx::query_as(
                    "SELECT settings, link_secret, tiers_version FROM cards_settings WHERE merchant_id = $1",
                )
                .bind(merchant).fetch_optional(&mut **self).await?;
                Ok(row.map(|(settings, link_secret, tiers_version)| SettingsRow { settings, link_secret, tiers_version }))
            }

            async fn ensure_settings(&mut self, merchant: &str, settings: &[u8], link_secret: &[u8], now: DateTime<Utc>) -> sqlx::Result<()> {
                sqlx::query(
                    "INSERT INTO cards_settings (merchant_id, settings, link_secret, tiers_version, updated_at)
                     VALUES ($1, $2, $3, 0, $4) ON CONFLICT (merchant_id) DO NOTHING",
                )
                .bind(merchant).bind(settings).bind(link_secret).bind(ts(now))
                .execute(&mut **self).await.map(|_| ())
            }

            async fn put_settings(&mut self, merchant: &str, settings: &[u8], now: DateTime<Utc>) -> sqlx::Result<()> {
                sqlx::query("UPDATE cards_settings SET settings = $2, updated_at = $3 WHERE merchant_id = $1")
                    .bind(merchant).bind(settings).bind(ts(now))
                    .execute(&mut **self).await.map(|_| ())
            }

            async fn bump_tiers_version(&mut self, merchant: &str, now: DateTime<Utc>) -> sqlx::Result<i64> {
                sqlx::query_scalar(
                    "UPDATE cards_settings SET tiers_version = tiers_version + 1, updated_at = $2
                     WHERE merchant_id = $1 RETURNING tiers_version",
                )
                .bind(merchant).bind(ts(now))
                .fetch_one(&mut **self).await
            }

            async fn insert_customer(&mut self, merchant: &str, c: &CustomerRow) -> sqlx::Result<()> {
                sqlx::query(&format!(
                    "INSERT INTO customers (merchant_id, {CUSTOMER_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
                ))
                .bind(merchant).bind(&c.customer_id).bind(c.state).bind(&c.merged_into).bind(&c.external_id)
                .bind(&c.phone).bind(c.birth_month).bind(c.birth_day).bind(c.gender).bind(c.consent_mask)
                .bind(&c.referrer_id).bind(c.referred_at).bind(&c.tier_code).bind(c.tier_seq)
                .bind(c.registered_at).bind(c.created_at).bind(c.updated_at).bind(c.version)
                .bind(&c.profile).bind(&c.consents).bind(&c.registration)
                .execute(&mut **self).await.map(|_| ())
            }

            async fn customer(&mut self, merchant: &str, id: &str) -> sqlx::Result<Option<CustomerRow>> {
                sqlx::query_as(&format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE merchant_id = $1 AND customer_id = $2"))
                    .bind(merchant).bind(id).fetch_optional(&mut **self).await
            }

            async fn lock_customer(&mut self, merchant: &str, id: &str) -> sqlx::Result<Option<CustomerRow>> {
                sqlx::query_as(&format!(
                    "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE merchant_id = $1 AND customer_id = $2{}", $for_update
                ))
                .bind(merchant).bind(id).fetch_optional(&mut **self).await
            }

            async fn update_customer(&mut self, merchant: &str, c: &CustomerRow) -> sqlx::Result<()> {
                sqlx::query(
                    "UPDATE customers SET state = $3, merged_into = $4, external_id = $5, phone = $6, birth_month = $7,
                     birth_day = $8, gender = $9, consent_mask = $10, referrer_id = $11, referred_at = $12, tier_code = $13,
                     tier_seq = $14, updated_at = $15, version = $16, profile = $17, consents = $18
                     WHERE merchant_id = $1 AND customer_id = $2",
                )
                .bind(merchant).bind(&c.customer_id).bind(c.state).bind(&c.merged_into).bind(&c.external_id)
                .bind(&c.phone).bind(c.birth_month).bind(c.birth_day).bind(c.gender).bind(c.consent_mask)
                .bind(&c.referrer_id).bind(c.referred_at).bind(&c.tier_code).bind(c.tier_seq)
                .bind(c.updated_at).bind(c.version).bind(&c.profile).bind(&c.consents)
                .execute(&mut **self).await.map(|_| ())
            }

            async fn customer_by_external_id(&mut self, merchant: &str, external_id: &str) -> sqlx::Result<Option<String>> {
                sqlx::query_scalar("SELECT customer_id FROM customers WHERE merchant_id = $1 AND external_id = $2")
                    .bind(merchant).bind(external_id).fetch_optional(&mut **self).await
            }

            async fn list_customers(&mut self, merchant: &str, f: &CustomerQuery) -> sqlx::Result<Vec<CustomerRow>> {
                let mut q = QueryBuilder::<$db>::new(format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE merchant_id = "));
                q.push_bind(merchant);
                if !f.include_merged {
                    q.push(" AND state = 1");
                }
                if !f.customer_ids.is_empty() {
                    q.push(" AND customer_id IN (");
                    let mut s = q.separated(", ");
                    for id in &f.customer_ids {
                        s.push_bind(id);
                    }
                    q.push(")");
                }
                if !f.tier_codes.is_empty() {
                    q.push(" AND tier_code IN (");
                    let mut s = q.separated(", ");
                    for code in &f.tier_codes {
                        s.push_bind(code);
                    }
                    q.push(")");
                }
                if let Some(from) = f.registered_from {
                    q.push(" AND registered_at >= ").push_bind(ts(from));
                }
                if let Some(to) = f.registered_to {
                    q.push(" AND registered_at < ").push_bind(ts(to));
                }
                if let Some((from, to)) = f.birthday {
                    let md = "(birth_month * 100 + birth_day)";
                    q.push(" AND birth_month > 0 AND ");
                    if from <= to {
                        q.push(format!("{md} BETWEEN ")).push_bind(from).push(" AND ").push_bind(to);
                    } else {
                        q.push(format!("({md} >= ")).push_bind(from).push(format!(" OR {md} <= ")).push_bind(to).push(")");
                    }
                }
                if f.birth_month > 0 {
                    q.push(" AND birth_month = ").push_bind(f.birth_month);
                }
                if f.consent_bit != 0 {
                    q.push(" AND (consent_mask & ").push_bind(f.consent_bit).push(") <> 0");
                }
                if let Some(since) = f.updated_since {
                    q.push(" AND updated_at >= ").push_bind(ts(since));
                }
                if !f.genders.is_empty() {
                    q.push(" AND gender IN (");
                    let mut s = q.separated(", ");
                    for g in &f.genders {
                        s.push_bind(*g);
                    }
                    q.push(")");
                }
                if let Some((at, id)) = &f.after {
                    q.push(" AND (created_at > ").push_bind(ts(*at))
                        .push(" OR (created_at = ").push_bind(ts(*at))
                        .push(" AND customer_id > ").push_bind(id).push("))");
                }
                q.push(" ORDER BY created_at, customer_id LIMIT ").push_bind(f.limit);
                q.build_query_as().fetch_all(&mut **self).await
            }

            async fn move_referrals(&mut self, merchant: &str, from: &str, to: &str) -> sqlx::Result<u64> {
                Ok(sqlx::query(
                    "UPDATE customers SET referrer_id = $3 WHERE merchant_id = $1 AND referrer_id = $2 AND customer_id <> $3",
                )
                .bind(merchant).bind(from).bind(to)
                .execute(&mut **self).await?.rows_affected())
            }

            async fn referrals(&mut self, merchant: &str, referrer: &str, level: i64, limit: i64, after: Option<&(DateTime<Utc>, String)>) -> sqlx::Result<(Vec<ReferralRow>, i64)> {
                // The walk stops at `level`, and a customer is never its own descendant (cycles
                // are refused on write), so the recursion is bounded.
                let below = "WITH RECURSIVE below (customer_id, referred_at, level) AS (
                        SELECT customer_id, referred_at, 1 FROM customers WHERE merchant_id = $1 AND referrer_id = $2 AND state = 1
                        UNION ALL
                        SELECT c.customer_id, c.referred_at, b.level + 1 FROM customers c JOIN below b
                          ON c.merchant_id = $1 AND c.referrer_id = b.customer_id AND c.state = 1
                        WHERE b.level < $3
                     )";
                // Keyset: links without a time sort as the oldest, on both engines.
                let end_of_time = DateTime::from_timestamp(253_402_300_799, 0).unwrap_or_default();
                let (at, id) = after.cloned().unwrap_or((end_of_time, String::new()));
                let rows = sqlx::query_as(&format!(
                    "{below} SELECT customer_id, referred_at FROM below WHERE level = $3
                       AND (COALESCE(referred_at, $6) < $4 OR (COALESCE(referred_at, $6) = $4 AND customer_id > $5))
                     ORDER BY COALESCE(referred_at, $6) DESC, customer_id LIMIT $7"
                ))
                .bind(merchant).bind(referrer).bind(level).bind(ts(at)).bind(id)
                .bind(ts(DateTime::<Utc>::UNIX_EPOCH)).bind(limit)
                .fetch_all(&mut **self).await?;
                let total: i64 = sqlx::query_scalar(&format!("{below} SELECT COUNT(*) FROM below WHERE level = $3"))
                    .bind(merchant).bind(referrer).bind(level)
                    .fetch_one(&mut **self).await?;
                Ok((rows, total))
            }

            async fn insert_identifier(&mut self, merchant: &str, i: &IdentifierRow) -> sqlx::Result<bool> {
                Ok(sqlx::query(&format!(
                    "INSERT INTO identifiers (merchant_id, {IDENTIFIER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (merchant_id, kind, value) DO NOTHING"
                ))
                .bind(merchant).bind(i.kind).bind(&i.value).bind(&i.customer_id).bind(i.state).bind(i.block_reason)
                .bind(&i.block_comment).bind(i.added_at).bind(i.blocked_at).bind(i.replaced_kind).bind(&i.replaced_value)
                .execute(&mut **self).await?.rows_affected() == 1)
            }

            async fn identifier(&mut self, merchant: &str, kind: i32, value: &str) -> sqlx::Result<Option<IdentifierRow>> {
                sqlx::query_as(&format!(
                    "SELECT {IDENTIFIER_COLUMNS} FROM identifiers WHERE merchant_id = $1 AND kind = $2 AND value = $3{}", $for_update
                ))
                .bind(merchant).bind(kind).bind(value).fetch_optional(&mut **self).await
            }

            async fn identifiers_of(&mut self, merchant: &str, customer: &str) -> sqlx::Result<Vec<IdentifierRow>> {
                sqlx::query_as(&format!(
                    "SELECT {IDENTIFIER_COLUMNS} FROM identifiers WHERE merchant_id = $1 AND customer_id = $2 ORDER BY added_at, kind, value"
                ))
                .bind(merchant).bind(customer).fetch_all(&mut **self).await
            }

            async fn update_identifier(&mut self, merchant: &str, i: &IdentifierRow) -> sqlx::Result<()> {
                sqlx::query(
                    "UPDATE identifiers SET customer_id = $4, state = $5, block_reason = $6, block_comment = $7, blocked_at = $8,
                     replaced_kind = $9, replaced_value = $10 WHERE merchant_id = $1 AND kind = $2 AND value = $3",
                )
                .bind(merchant).bind(i.kind).bind(&i.value).bind(&i.customer_id).bind(i.state).bind(i.block_reason)
                .bind(&i.block_comment).bind(i.blocked_at).bind(i.replaced_kind).bind(&i.replaced_value)
                .execute(&mut **self).await.map(|_| ())
            }

            async fn delete_identifier(&mut self, merchant: &str, kind: i32, value: &str) -> sqlx::Result<()> {
                sqlx::query("DELETE FROM identifiers WHERE merchant_id = $1 AND kind = $2 AND value = $3")
                    .bind(merchant).bind(kind).bind(value)
                    .execute(&mut **self).await.map(|_| ())
            }

            async fn move_identifiers(&mut self, merchant: &str, from: &str, to: &str) -> sqlx::Result<u64> {
                Ok(sqlx::query("UPDATE identifiers SET customer_id = $3 WHERE merchant_id = $1 AND customer_id = $2")
                    .bind(merchant).bind(from).bind(to)
                    .execute(&mut **self).await?.rows_affected())
            }

            async fn lookup(&mut self, merchant: &str, candidates: &[(i32, String)]) -> sqlx::Result<Vec<LookupHit>> {
                if candidates.is_empty() {
                    return Ok(vec![]);
                }
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT i.kind, i.value, i.customer_id, i.state, i.block_reason, i.block_comment, i.added_at, i.blocked_at,
                     i.replaced_kind, i.replaced_value, c.customer_id AS c_customer_id, c.state AS c_state, c.merged_into,
                     c.external_id, c.phone, c.birth_month, c.birth_day, c.gender, c.consent_mask, c.referrer_id, c.referred_at,
                     c.tier_code, c.tier_seq, c.registered_at, c.created_at, c.updated_at, c.version, c.profile, c.consents,
                     c.registration,
                     COALESCE((SELECT s.tiers_version FROM cards_settings s WHERE s.merchant_id = i.merchant_id), 0) AS tiers_version
                     FROM identifiers i JOIN customers c ON c.merchant_id = i.merchant_id AND c.customer_id = i.customer_id
                     WHERE i.merchant_id = ",
                );
                q.push_bind(merchant).push(" AND (");
                for (n, (kind, value)) in candidates.iter().enumerate() {
                    if n > 0 {
                        q.push(" OR ");
                    }
                    q.push("(i.kind = ").push_bind(*kind).push(" AND i.value = ").push_bind(value).push(")");
                }
                q.push(")");
                let rows: Vec<LookupRow> = q.build_query_as().fetch_all(&mut **self).await?;
                Ok(rows.into_iter().map(LookupRow::split).collect())
            }

            async fn tiers(&mut self, merchant: &str) -> sqlx::Result<Vec<Vec<u8>>> {
                sqlx::query_scalar("SELECT tier FROM tiers WHERE merchant_id = $1 ORDER BY rank")
                    .bind(merchant).fetch_all(&mut **self).await
            }

            async fn tier(&mut self, merchant: &str, code: &str) -> sqlx::Result<Option<Vec<u8>>> {
                sqlx::query_scalar("SELECT tier FROM tiers WHERE merchant_id = $1 AND code = $2")
                    .bind(merchant).bind(code).fetch_optional(&mut **self).await
            }

            async fn tier_with_rank(&mut self, merchant: &str, rank: i32) -> sqlx::Result<Option<String>> {
                sqlx::query_scalar("SELECT code FROM tiers WHERE merchant_id = $1 AND rank = $2")
                    .bind(merchant).bind(rank).fetch_optional(&mut **self).await
            }

            async fn put_tier(&mut self, merchant: &str, code: &str, rank: i32, tier: &[u8], now: DateTime<Utc>) -> sqlx::Result<bool> {
                let existed: Option<i32> = sqlx::query_scalar("SELECT rank FROM tiers WHERE merchant_id = $1 AND code = $2")
                    .bind(merchant).bind(code).fetch_optional(&mut **self).await?;
                sqlx::query(
                    "INSERT INTO tiers (merchant_id, code, rank, tier, updated_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (merchant_id, code) DO UPDATE SET rank = excluded.rank, tier = excluded.tier, updated_at = excluded.updated_at",
                )
                .bind(merchant).bind(code).bind(rank).bind(tier).bind(ts(now))
                .execute(&mut **self).await?;
                Ok(existed.is_none())
            }

            async fn delete_tier(&mut self, merchant: &str, code: &str) -> sqlx::Result<bool> {
                Ok(sqlx::query("DELETE FROM tiers WHERE merchant_id = $1 AND code = $2")
                    .bind(merchant).bind(code).execute(&mut **self).await?.rows_affected() == 1)
            }

            async fn customers_with_tier(&mut self, merchant: &str, code: &str) -> sqlx::Result<i64> {
                // Merged records are read-only (their tier cannot be moved), so they do not count.
                sqlx::query_scalar("SELECT COUNT(*) FROM customers WHERE merchant_id = $1 AND tier_code = $2 AND state = 1")
                    .bind(merchant).bind(code).fetch_one(&mut **self).await
            }

            async fn insert_tier_history(&mut self, merchant: &str, customer: &str, seq: i64, assignment: &[u8], at: DateTime<Utc>) -> sqlx::Result<()> {
                sqlx::query(
                    "INSERT INTO tier_history (merchant_id, customer_id, seq, assignment, assigned_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(merchant).bind(customer).bind(seq).bind(assignment).bind(ts(at))
                .execute(&mut **self).await.map(|_| ())
            }

            async fn tier_assignment(&mut self, merchant: &str, customer: &str, seq: i64) -> sqlx::Result<Option<Vec<u8>>> {
                sqlx::query_scalar("SELECT assignment FROM tier_history WHERE merchant_id = $1 AND customer_id = $2 AND seq = $3")
                    .bind(merchant).bind(customer).bind(seq).fetch_optional(&mut **self).await
            }

            async fn tier_history(&mut self, merchant: &str, customer: &str, limit: i64, before: Option<i64>) -> sqlx::Result<Vec<(i64, Vec<u8>)>> {
                sqlx::query_as(
                    "SELECT seq, assignment FROM tier_history WHERE merchant_id = $1 AND customer_id = $2 AND seq < $3
                     ORDER BY seq DESC LIMIT $4",
                )
                .bind(merchant).bind(customer).bind(before.unwrap_or(i64::MAX)).bind(limit).fetch_all(&mut **self).await
            }

            async fn insert_link(&mut self, merchant: &str, l: &LinkRow) -> sqlx::Result<()> {
                sqlx::query(
                    "INSERT INTO registration_links (merchant_id, link_id, link, max_uses, uses, revoked, expires_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(merchant).bind(&l.link_id).bind(&l.link).bind(l.max_uses).bind(l.uses).bind(l.revoked)
                .bind(l.expires_at).bind(l.created_at)
                .execute(&mut **self).await.map(|_| ())
            }

            async fn lock_link(&mut self, merchant: &str, link_id: &str) -> sqlx::Result<Option<LinkRow>> {
                sqlx::query_as(&format!(
                    "SELECT link_id, link, max_uses, uses, revoked, expires_at, created_at FROM registration_links
                     WHERE merchant_id = $1 AND link_id = $2{}", $for_update
                ))
                .bind(merchant).bind(link_id).fetch_optional(&mut **self).await
            }

            async fn update_link(&mut self, merchant: &str, l: &LinkRow) -> sqlx::Result<()> {
                sqlx::query("UPDATE registration_links SET uses = $3, revoked = $4 WHERE merchant_id = $1 AND link_id = $2")
                    .bind(merchant).bind(&l.link_id).bind(l.uses).bind(l.revoked)
                    .execute(&mut **self).await.map(|_| ())
            }

            async fn links(&mut self, merchant: &str, include_inactive: bool, now: DateTime<Utc>, limit: i64, after: Option<&(DateTime<Utc>, String)>) -> sqlx::Result<Vec<LinkRow>> {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT link_id, link, max_uses, uses, revoked, expires_at, created_at FROM registration_links WHERE merchant_id = ",
                );
                q.push_bind(merchant);
                if !include_inactive {
                    q.push(" AND revoked = FALSE AND (expires_at IS NULL OR expires_at > ").push_bind(ts(now))
                        .push(") AND (max_uses = 0 OR uses < max_uses)");
                }
                if let Some((at, id)) = after {
                    q.push(" AND (created_at < ").push_bind(ts(*at))
                        .push(" OR (created_at = ").push_bind(ts(*at))
                        .push(" AND link_id < ").push_bind(id.clone()).push("))");
                }
                q.push(" ORDER BY created_at DESC, link_id DESC LIMIT ").push_bind(limit);
                q.build_query_as().fetch_all(&mut **self).await
            }

            async fn insert_events(&mut self, merchant: &str, events: &[(String, Vec<u8>)], now: DateTime<Utc>) -> sqlx::Result<()> {
                if events.is_empty() {
                    return Ok(());
                }
                let mut q = QueryBuilder::<$db>::new("INSERT INTO outbox (merchant_id, event_id, event, created_at) ");
                q.push_values(events, |mut b, (id, event)| {
                    b.push_bind(merchant).push_bind(id).push_bind(event).push_bind(ts(now));
                });
                q.build().execute(&mut **self).await.map(|_| ())
            }
        }
    };
}

// Writes run in a transaction; reads (the lookup hot path) on a plain pooled connection, which
// saves the BEGIN and ROLLBACK round trips.
impl_cards_tx!(
    sqlx::Transaction<'static, Postgres>,
    Postgres,
    " FOR UPDATE"
);
impl_cards_tx!(sqlx::Transaction<'static, Sqlite>, Sqlite, "");
impl_cards_tx!(sqlx::pool::PoolConnection<Postgres>, Postgres, "");
impl_cards_tx!(sqlx::pool::PoolConnection<Sqlite>, Sqlite, "");

/// A row of [`CardsTx::lookup`]: the matched identifier and its customer.
#[derive(sqlx::FromRow)]
struct LookupRow {
    #[sqlx(flatten)]
    identifier: IdentifierRow,
    c_customer_id: String,
    c_state: i32,
    merged_into: String,
    external_id: Option<String>,
    phone: String,
    birth_month: i32,
    birth_day: i32,
    gender: i32,
    consent_mask: i32,
    referrer_id: String,
    referred_at: Option<Timestamp>,
    tier_code: String,
    tier_seq: i64,
    registered_at: Timestamp,
    created_at: Timestamp,
    updated_at: Timestamp,
    version: i64,
    profile: Vec<u8>,
    consents: Vec<u8>,
    registration: Vec<u8>,
    tiers_version: i64,
}

/// An identifier found by [`CardsTx::lookup`], its customer, and the merchant's tier version.
#[derive(Debug, Clone)]
pub struct LookupHit {
    pub identifier: IdentifierRow,
    pub customer: CustomerRow,
    pub tiers_version: i64,
}

impl LookupRow {
    fn split(self) -> LookupHit {
        LookupHit {
            identifier: self.identifier,
            tiers_version: self.tiers_version,
            customer: CustomerRow {
                customer_id: self.c_customer_id,
                state: self.c_state,
                merged_into: self.merged_into,
                external_id: self.external_id,
                phone: self.phone,
                birth_month: self.birth_month,
                birth_day: self.birth_day,
                gender: self.gender,
                consent_mask: self.consent_mask,
                referrer_id: self.referrer_id,
                referred_at: self.referred_at,
                tier_code: self.tier_code,
                tier_seq: self.tier_seq,
                registered_at: self.registered_at,
                created_at: self.created_at,
                updated_at: self.updated_at,
                version: self.version,
                profile: self.profile,
                consents: self.consents,
                registration: self.registration,
            },
        }
    }
}

/// Runs `work` in one write transaction on either engine (`BEGIN IMMEDIATE` on SQLite, so
/// writers queue instead of failing), committing when it returns `Ok`.
#[macro_export]
macro_rules! in_write_tx {
    ($db:expr, $tx:ident => $work:expr) => {{
        match $db {
            kopilka_runtime::Db::Postgres(pool) => {
                let mut $tx = pool.begin().await.map_err($crate::error::Error::from)?;
                match $work {
                    Ok(value) => $tx
                        .commit()
                        .await
                        .map(|()| value)
                        .map_err($crate::error::Error::from),
                    Err(e) => Err(e),
                }
            }
            kopilka_runtime::Db::Sqlite(pool) => {
                let mut $tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err($crate::error::Error::from)?;
                match $work {
                    Ok(value) => $tx
                        .commit()
                        .await
                        .map(|()| value)
                        .map_err($crate::error::Error::from),
                    Err(e) => Err(e),
                }
            }
        }
    }};
}

/// Runs `work` on a pooled connection of either engine, outside a transaction (single reads).
#[macro_export]
macro_rules! on_conn {
    ($db:expr, $conn:ident => $work:expr) => {{
        match $db {
            kopilka_runtime::Db::Postgres(pool) => {
                let mut $conn = pool.acquire().await.map_err($crate::error::Error::from)?;
                $work
            }
            kopilka_runtime::Db::Sqlite(pool) => {
                let mut $conn = pool.acquire().await.map_err($crate::error::Error::from)?;
                $work
            }
        }
    }};
}
