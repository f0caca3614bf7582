//! [`Cards`]: the state every RPC shares (database, tier cache, settings, the ledger client),
//! idempotent execution of mutations, and conversions between rows and the API's messages.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kopilka_proto::cards as pb;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_proto::types;
use kopilka_proto::wkt::Timestamp;
use kopilka_runtime::service_auth::ServiceChannel;
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::{Violations, MAX_CLOCK_SKEW};
use kopilka_runtime::Db;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::cache::TierCache;
use crate::error::Error;
use crate::identifiers::{self, Formats};
use crate::store::{CardsTx, Claim, CustomerRow, IdentifierRow, SettingsRow};
use crate::{in_write_tx, on_conn};

/// Longest id accepted (request, customer, link, store …).
pub const MAX_ID: usize = 128;
/// How long a merchant's settings are reused before being read again.
const SETTINGS_TTL: Duration = Duration::from_secs(5);

pub const STATE_ACTIVE: i32 = pb::CustomerState::Active as i32;
pub const STATE_MERGED: i32 = pb::CustomerState::Merged as i32;
pub const ID_ACTIVE: i32 = pb::IdentifierState::Active as i32;
pub const ID_BLOCKED: i32 = pb::IdentifierState::Blocked as i32;

/// A merchant's settings, decoded and compiled.
#[derive(Clone)]
pub struct MerchantSettings {
    pub settings: pb::CardsSettings,
    pub formats: Formats,
    pub link_secret: Vec<u8>,
}

/// Settings read recently, with when they were read.
type SettingsByMerchant = std::collections::HashMap<String, (Instant, Arc<MerchantSettings>)>;

/// Shared state of the cards service.
#[derive(Clone)]
pub struct Cards {
    pub(crate) db: Db,
    pub(crate) cache: TierCache,
    pub(crate) ledger: Option<LedgerServiceClient<ServiceChannel>>,
    settings: Arc<Mutex<SettingsByMerchant>>,
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// IDEMPOTENCY_KEY_REUSED: `request_id` was used for another request.
pub(crate) fn key_reused(request_id: &str) -> Error {
    Refusal::precondition(
        "IDEMPOTENCY_KEY_REUSED",
        format!("request_id `{request_id}` was used for a different request"),
    )
    .with("request_id", request_id)
    .into()
}

pub(crate) fn digest(message: &impl Message) -> Vec<u8> {
    Sha256::digest(message.encode_to_vec()).to_vec()
}

/// Checks the (merchant, customer) pair a per-customer read names.
pub(crate) fn check_customer_ref(merchant: &str, customer: &str) -> Result<(), Error> {
    let mut v = Violations::new();
    v.id("merchant_id", merchant, MAX_ID, true);
    v.id("customer_id", customer, MAX_ID, true);
    Ok(v.check()?)
}

/// At most `max` characters (LIMIT_EXCEEDED beyond), for text that may span lines (comments,
/// descriptions) and optional references to other services' ids.
pub(crate) fn check_len(field: &str, value: &str, max: usize, v: &mut Violations) {
    if value.chars().count() > max {
        v.limit(field, max, "characters");
    }
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> Timestamp {
    kopilka_runtime::timestamps::to_proto(t)
}

/// A request timestamp as an instant (microsecond precision, as stored); `None` with a
/// violation when it is not a valid timestamp.
pub(crate) fn instant(field: &str, t: &Timestamp, v: &mut Violations) -> Option<DateTime<Utc>> {
    v.timestamp(field, t).map(micros)
}

/// Like [`instant`], and at most [`MAX_CLOCK_SKEW`] after `now` (TIMESTAMP_IN_FUTURE beyond).
pub(crate) fn not_future(
    field: &str,
    t: &Timestamp,
    now: DateTime<Utc>,
    v: &mut Violations,
) -> Option<DateTime<Utc>> {
    v.not_future(field, Some(t), now, MAX_CLOCK_SKEW)
        .map(micros)
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A page of a keyset-paged list: `page_size` (0 = `default`, above `max` LIMIT_EXCEEDED) and
/// `page_token`, the position after the previous page's last row as [`Cursor`] wrote it
/// (PAGE_TOKEN_INVALID when it is not one this service issued). A page costs the rows it
/// returns, however deep it is, and rows inserted meanwhile never shift it. Returns (limit,
/// cursor).
pub(crate) fn page<C: Cursor>(
    size: i32,
    token: &str,
    default: u32,
    max: u32,
    v: &mut Violations,
) -> (i64, Option<C>) {
    let limit = i64::from(v.page_size("page_size", size, default, max));
    let after = if token.is_empty() {
        None
    } else {
        let cursor = C::read(token);
        if cursor.is_none() {
            v.page_token_invalid("page_token");
        }
        cursor
    };
    (limit, after)
}

/// The next page's token: the last row's cursor when the page came back full.
pub(crate) fn next_token<T, C: Cursor>(rows: &[T], limit: i64, cursor: impl Fn(&T) -> C) -> String {
    match rows.last() {
        Some(last) if rows.len() as i64 >= limit => cursor(last).write(),
        _ => String::new(),
    }
}

/// A list position written into page tokens.
pub(crate) trait Cursor: Sized {
    fn read(token: &str) -> Option<Self>;
    fn write(&self) -> String;
}

/// A sequence number (tier history).
impl Cursor for i64 {
    fn read(token: &str) -> Option<Self> {
        token.parse().ok().filter(|n| *n >= 0)
    }
    fn write(&self) -> String {
        self.to_string()
    }
}

/// A time and an id (`<unix micros>|<id>`).
impl Cursor for (DateTime<Utc>, String) {
    fn read(token: &str) -> Option<Self> {
        let (at, id) = token.split_once('|')?;
        let at = DateTime::from_timestamp_micros(at.parse().ok()?)?;
        (!id.is_empty()).then(|| (at, id.to_owned()))
    }
    fn write(&self) -> String {
        format!("{}|{}", self.0.timestamp_micros(), self.1)
    }
}

/// An outbox event for `customer`, encoded with its id.
pub(crate) fn event(
    merchant: &str,
    customer: &str,
    correlation: &str,
    payload: types::event::Payload,
    now: DateTime<Utc>,
) -> (String, Vec<u8>) {
    let event = types::Event {
        event_id: new_id(),
        merchant_id: merchant.to_owned(),
        occurred_at: Some(timestamp(now)),
        customer_id: customer.to_owned(),
        producer: "cards-svc".to_owned(),
        correlation_id: correlation.to_owned(),
        payload: Some(payload),
    };
    (event.event_id.clone(), event.encode_to_vec())
}

/// The default settings of a merchant that never set any.
pub fn default_settings() -> pb::CardsSettings {
    pb::CardsSettings {
        default_phone_region: "RU".to_owned(),
        card_number_formats: vec![],
        ean13_try_without_check_digit: false,
        referral_max_depth: 3,
        registration_page_url: String::new(),
        registration_link_ttl: None,
    }
}

/// A settings row decoded and compiled.
fn compile_settings(row: &SettingsRow) -> Result<Arc<MerchantSettings>, Error> {
    let settings = pb::CardsSettings::decode(row.settings.as_slice())?;
    // Stored settings were validated on the way in.
    let formats = Formats::from_settings(&settings, "").unwrap_or_default();
    Ok(Arc::new(MerchantSettings {
        settings,
        formats,
        link_secret: row.link_secret.clone(),
    }))
}

impl IdentifierRow {
    pub(crate) fn proto(&self) -> types::Identifier {
        identifiers::to_proto(&identifiers::Candidate {
            kind: types::IdentifierKind::try_from(self.kind).unwrap_or_default(),
            value: self.value.clone(),
        })
    }

    pub(crate) fn record(&self) -> pb::IdentifierRecord {
        pb::IdentifierRecord {
            identifier: Some(self.proto()),
            customer_id: self.customer_id.clone(),
            state: self.state,
            block_reason: self.block_reason,
            block_comment: self.block_comment.clone(),
            added_at: Some(timestamp(self.added_at.0)),
            blocked_at: self.blocked_at.map(|t| timestamp(t.0)),
            replaced_by: (self.replaced_kind != 0).then(|| {
                identifiers::to_proto(&identifiers::Candidate {
                    kind: types::IdentifierKind::try_from(self.replaced_kind).unwrap_or_default(),
                    value: self.replaced_value.clone(),
                })
            }),
        }
    }
}

impl CustomerRow {
    pub(crate) fn consents_list(&self) -> Result<Vec<types::Consent>, Error> {
        Ok(pb::SetConsentResponse::decode(self.consents.as_slice())?.consents)
    }

    /// The API's customer: the row, its active identifiers and its current tier assignment.
    pub(crate) fn proto(
        &self,
        identifiers: &[IdentifierRow],
        tier: Option<pb::TierAssignment>,
    ) -> Result<pb::Customer, Error> {
        Ok(pb::Customer {
            customer_id: self.customer_id.clone(),
            profile: Some(pb::CustomerProfile::decode(self.profile.as_slice())?),
            consents: self.consents_list()?,
            tier,
            registration: Some(pb::RegistrationSource::decode(
                self.registration.as_slice(),
            )?),
            registered_at: Some(timestamp(self.registered_at.0)),
            referrer_customer_id: self.referrer_id.clone(),
            identifiers: identifiers
                .iter()
                .filter(|i| i.state == ID_ACTIVE)
                .map(IdentifierRow::proto)
                .collect(),
            state: self.state,
            merged_into_customer_id: self.merged_into.clone(),
            external_id: self.external_id.clone().unwrap_or_default(),
            updated_at: Some(timestamp(self.updated_at.0)),
            etag: self.version.to_string(),
        })
    }
}

/// Which mutation [`Cards::mutate`] runs.
pub(crate) enum Command<'a> {
    CreateCustomer(&'a pb::CreateCustomerRequest),
    SelfRegister(&'a pb::SelfRegisterRequest),
    UpdateCustomer(&'a pb::UpdateCustomerRequest),
    SetConsent(&'a pb::SetConsentRequest),
    MergeCustomers(&'a pb::MergeCustomersRequest),
    AddIdentifier(&'a pb::AddIdentifierRequest),
    BlockIdentifier(&'a pb::BlockIdentifierRequest),
    UnblockIdentifier(&'a pb::UnblockIdentifierRequest),
    ReplaceCard(&'a pb::ReplaceCardRequest),
    UpsertTier(&'a pb::UpsertTierRequest),
    DeleteTier(&'a pb::DeleteTierRequest),
    AssignTier(&'a pb::AssignTierRequest),
    SetReferrer(&'a pb::SetReferrerRequest),
    CreateLink(&'a pb::CreateRegistrationLinkRequest),
    RevokeLink(&'a pb::RevokeRegistrationLinkRequest),
    UpdateSettings(&'a pb::UpdateCardsSettingsRequest),
}

impl Cards {
    pub fn new(
        db: Db,
        cache: TierCache,
        ledger: Option<LedgerServiceClient<ServiceChannel>>,
    ) -> Self {
        Cards {
            db,
            cache,
            ledger,
            settings: Arc::default(),
        }
    }

    /// Runs a mutation idempotently: a repeat of `request_id` with the same payload returns the
    /// stored answer; with another payload it is IDEMPOTENCY_KEY_REUSED.
    pub(crate) async fn mutate<R: Message + Default>(
        &self,
        merchant: &str,
        request_id: &str,
        request: &impl Message,
        command: Command<'_>,
    ) -> Result<R, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", merchant, MAX_ID, true);
        v.id("request_id", request_id, MAX_ID, true);
        v.check()?;
        let operation = command.name();
        let hash = digest(request);
        let mut attempt = 0;
        loop {
            let now = Utc::now();
            let result: Result<Vec<u8>, Error> = in_write_tx!(&self.db, tx => {
                let tx: &mut dyn CardsTx = &mut tx;
                match tx.claim_request(merchant, request_id, operation, &hash, now).await {
                    Err(e) => Err(Error::from(e)),
                    Ok(Claim::Done { operation: op, request_hash, response }) => {
                        if op == operation && request_hash == hash {
                            Ok(response)
                        } else {
                            Err(key_reused(request_id))
                        }
                    }
                    Ok(Claim::New) => match self.apply(tx, merchant, request_id, &command, now).await {
                        Ok(bytes) => tx.finish_request(merchant, request_id, &bytes).await.map(|()| bytes).map_err(Error::from),
                        Err(e) => Err(e),
                    },
                }
            });
            match result {
                Err(e) if e.is_retryable_conflict() && attempt < 5 => attempt += 1,
                Err(e) => return Err(e),
                Ok(bytes) => {
                    if matches!(command, Command::UpdateSettings(_)) {
                        self.forget_settings(merchant);
                    }
                    return Ok(R::decode(bytes.as_slice())?);
                }
            }
        }
    }

    async fn apply(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        request_id: &str,
        command: &Command<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<u8>, Error> {
        let s = self.settings_in(tx, merchant, now).await?;
        Ok(match command {
            Command::CreateCustomer(r) => self
                .create_customer(tx, merchant, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::SelfRegister(r) => self
                .self_register(tx, merchant, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::UpdateCustomer(r) => self
                .update_customer(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::SetConsent(r) => self
                .set_consent(tx, merchant, request_id, r, now)
                .await?
                .encode_to_vec(),
            Command::MergeCustomers(r) => self
                .merge_customers(tx, merchant, request_id, r, now)
                .await?
                .encode_to_vec(),
            Command::AddIdentifier(r) => self
                .add_identifier(tx, merchant, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::BlockIdentifier(r) => self
                .block_identifier(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::UnblockIdentifier(r) => self
                .unblock_identifier(tx, merchant, r, &s)
                .await?
                .encode_to_vec(),
            Command::ReplaceCard(r) => self
                .replace_card(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::UpsertTier(r) => self
                .upsert_tier(tx, merchant, r, now)
                .await?
                .encode_to_vec(),
            Command::DeleteTier(r) => self
                .delete_tier(tx, merchant, r, now)
                .await?
                .encode_to_vec(),
            Command::AssignTier(r) => self
                .assign_tier(tx, merchant, request_id, r, now)
                .await?
                .encode_to_vec(),
            Command::SetReferrer(r) => self
                .set_referrer(tx, merchant, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::CreateLink(r) => self
                .create_link(tx, merchant, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::RevokeLink(r) => self.revoke_link(tx, merchant, r, &s).await?.encode_to_vec(),
            Command::UpdateSettings(r) => self
                .update_settings(tx, merchant, r, now)
                .await?
                .encode_to_vec(),
        })
    }

    /// The merchant's settings inside a write transaction, created with defaults (and a fresh
    /// link secret) on first use.
    pub(crate) async fn settings_in(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        now: DateTime<Utc>,
    ) -> Result<Arc<MerchantSettings>, Error> {
        if let Some(s) = self.cached_settings(merchant) {
            return Ok(s);
        }
        match tx.settings(merchant).await? {
            Some(row) => self.remember_settings(merchant, &row),
            None => {
                let secret: [u8; 32] = rand::random();
                tx.ensure_settings(merchant, &default_settings().encode_to_vec(), &secret, now)
                    .await?;
                let row = tx
                    .settings(merchant)
                    .await?
                    .ok_or_else(|| Error::Db(sqlx::Error::RowNotFound))?;
                // Not remembered: the row (and its link secret) exists only once this transaction
                // commits, and a refused request rolls it back.
                compile_settings(&row)
            }
        }
    }

    /// The merchant's settings for a read (defaults when never set).
    pub(crate) async fn settings_for_read(
        &self,
        merchant: &str,
    ) -> Result<Arc<MerchantSettings>, Error> {
        if let Some(s) = self.cached_settings(merchant) {
            return Ok(s);
        }
        let row = on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            conn.settings(merchant).await?
        });
        match row {
            Some(row) => self.remember_settings(merchant, &row),
            // Not cached: the first write creates the row with its secret.
            None => Ok(Arc::new(MerchantSettings {
                settings: default_settings(),
                formats: Formats::default(),
                link_secret: vec![],
            })),
        }
    }

    fn cached_settings(&self, merchant: &str) -> Option<Arc<MerchantSettings>> {
        let map = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        map.get(merchant)
            .filter(|(at, _)| at.elapsed() < SETTINGS_TTL)
            .map(|(_, s)| s.clone())
    }

    fn remember_settings(
        &self,
        merchant: &str,
        row: &SettingsRow,
    ) -> Result<Arc<MerchantSettings>, Error> {
        let s = compile_settings(row)?;
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(merchant.to_owned(), (Instant::now(), s.clone()));
        Ok(s)
    }

    pub(crate) fn forget_settings(&self, merchant: &str) {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(merchant);
    }

    /// Prunes idempotency records older than `retention`.
    pub async fn prune(&self, retention: chrono::Duration) -> Result<u64, Error> {
        in_write_tx!(&self.db, tx => {
            let tx: &mut dyn CardsTx = &mut tx;
            tx.prune_idempotency(Utc::now() - retention).await.map_err(Error::from)
        })
    }
}

impl Command<'_> {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Command::CreateCustomer(_) => "CreateCustomer",
            Command::SelfRegister(_) => "SelfRegister",
            Command::UpdateCustomer(_) => "UpdateCustomer",
            Command::SetConsent(_) => "SetConsent",
            Command::MergeCustomers(_) => "MergeCustomers",
            Command::AddIdentifier(_) => "AddIdentifier",
            Command::BlockIdentifier(_) => "BlockIdentifier",
            Command::UnblockIdentifier(_) => "UnblockIdentifier",
            Command::ReplaceCard(_) => "ReplaceCard",
            Command::UpsertTier(_) => "UpsertTier",
            Command::DeleteTier(_) => "DeleteTier",
            Command::AssignTier(_) => "AssignTier",
            Command::SetReferrer(_) => "SetReferrer",
            Command::CreateLink(_) => "CreateRegistrationLink",
            Command::RevokeLink(_) => "RevokeRegistrationLink",
            Command::UpdateSettings(_) => "UpdateCardsSettings",
        }
    }
}
