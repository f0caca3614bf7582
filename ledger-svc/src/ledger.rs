//! The ledger's operations: validate, then apply inside one database transaction through
//! [`LedgerTx`], idempotently by `request_id`. The gRPC layer (`api`) only converts.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use kopilka_proto::ledger as pb;
use kopilka_proto::types::{LotKind, PointsGrant};
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::Violations;
use prost::Message;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::convert::{self, opt_instant};
use crate::domain::amounts::Sign;
use crate::domain::book::{Account, Book, BookError, NewLot};
use crate::domain::clock::Clock;
use crate::error::Error;
use crate::settings::Settings;
use crate::store::{Claim, HoldRow, LedgerTx, TxRecord};
use crate::{in_read_tx, in_write_tx};
use kopilka_runtime::Db;

/// Hold states (values of `kopilka.ledger.v1.HoldState`).
pub mod hold_state {
    pub const ACTIVE: i32 = 1;
    pub const COMMITTED: i32 = 2;
    pub const VOIDED: i32 = 3;
    pub const EXPIRED: i32 = 4;
}

/// Transaction kinds (values of `kopilka.ledger.v1.TransactionKind`).
pub mod tx_kind {
    pub const RECEIPT: i32 = 1;
    pub const REFUND: i32 = 2;
    pub const ACCRUAL: i32 = 3;
    pub const GIFT: i32 = 4;
    pub const REDEMPTION: i32 = 5;
    pub const HOLD: i32 = 6;
    pub const HOLD_RELEASE: i32 = 7;
    pub const ADJUSTMENT: i32 = 8;
    pub const ACTIVATION: i32 = 9;
    pub const EXPIRY: i32 = 10;
}

/// Longest id (request, customer, receipt, hold, line …), in characters.
pub(crate) const MAX_ID: usize = 128;
/// Longest free text (descriptions, reasons, grant keys), in characters.
pub(crate) const MAX_TEXT: usize = 500;
/// Most lines per receipt.
pub(crate) const MAX_LINES: usize = 500;
pub(crate) use kopilka_runtime::validate::MAX_CLOCK_SKEW;

/// How long a replica trusts its cached copy of a merchant's settings. Scales never change
/// once a merchant has entries; a policy change reaches other replicas within this time.
const SETTINGS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

type SettingsCache =
    Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Settings)>>>;

/// The ledger: a database, a clock, and a short-lived cache of merchant settings (read by
/// every write).
#[derive(Clone)]
pub struct Ledger {
    db: Db,
    clock: Arc<dyn Clock>,
    settings_cache: SettingsCache,
}

/// A customer's account loaded for a write.
pub(crate) struct Loaded {
    pub(crate) book: Book,
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(crate) fn digest(message: &impl Message) -> Vec<u8> {
    Sha256::digest(message.encode_to_vec()).to_vec()
}

/// A required amount of at most `scale` decimals with `sign`; zero (and a violation) when it
/// is missing or malformed.
pub(crate) fn parse_into(
    field: &str,
    value: &str,
    scale: u32,
    sign: Sign,
    v: &mut Violations,
) -> Decimal {
    v.decimal(field, value, scale, sign, true)
        .unwrap_or(Decimal::ZERO)
}

pub(crate) fn book_error(e: BookError, s: &Settings) -> Error {
    match e {
        BookError::Insufficient {
            available,
            requested,
        } => Error::insufficient(s, available, requested),
        BookError::NegativeLimit { limit, would_be } => Refusal::precondition(
            "NEGATIVE_BALANCE_NOT_ALLOWED",
            format!(
                "the balance would fall to {}, below the allowed -{}",
                s.points(would_be),
                s.points(limit)
            ),
        )
        .into(),
    }
}

/// HOLD_NOT_FOUND.
pub(crate) fn hold_not_found(hold_id: &str) -> Error {
    Refusal::not_found("HOLD_NOT_FOUND", format!("hold `{hold_id}` not found")).into()
}

/// HOLD_FINALIZED; the metadata's state is the `HoldState` value name.
pub(crate) fn hold_finalized(hold: &HoldRow, message: String) -> Error {
    let state = pb::HoldState::try_from(hold.state).unwrap_or(pb::HoldState::Unspecified);
    Refusal::precondition("HOLD_FINALIZED", message)
        .with("state", state.as_str_name())
        .into()
}

/// HOLD_AMOUNT_EXCEEDED: `amount` is more than the hold's.
pub(crate) fn hold_exceeded(hold: &HoldRow, amount: Decimal, s: &Settings) -> Error {
    let held = s.points(hold.amount);
    Refusal::precondition(
        "HOLD_AMOUNT_EXCEEDED",
        format!("{} exceeds the {held} held", s.points(amount)),
    )
    .with("held", held)
    .into()
}

/// The UTC day number of an instant (purchase_days buckets).
pub fn day_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(86_400)
}

impl Ledger {
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            clock,
            settings_cache: SettingsCache::default(),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) async fn settings(tx: &mut dyn LedgerTx, merchant: &str) -> Result<Settings, Error> {
        match tx.settings(merchant).await? {
            Some(bytes) => Settings::from_proto(&pb::LedgerSettings::decode(bytes.as_slice())?),
            None => Ok(Settings::default()),
        }
    }

    /// Settings for a write; registers the merchant (for the background jobs) on its first one.
    async fn settings_for_write(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        now: DateTime<Utc>,
    ) -> Result<Settings, Error> {
        let cached = {
            let cache = self
                .settings_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            cache
                .get(merchant)
                .filter(|(at, _)| at.elapsed() < SETTINGS_TTL)
                .map(|(_, s)| s.clone())
        };
        if let Some(s) = cached {
            return Ok(s);
        }
        let s = match tx.settings(merchant).await? {
            Some(bytes) => Settings::from_proto(&pb::LedgerSettings::decode(bytes.as_slice())?)?,
            None => {
                let s = Settings::default();
                tx.put_settings(merchant, &s.to_proto().encode_to_vec(), now)
                    .await?;
                s
            }
        };
        self.settings_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(merchant.to_owned(), (std::time::Instant::now(), s.clone()));
        Ok(s)
    }

    pub(crate) async fn load(
        tx: &mut dyn LedgerTx,
        merchant: &str,
        customer: &str,
        now: DateTime<Utc>,
    ) -> Result<Loaded, Error> {
        let account = tx.lock_account(merchant, customer, now).await?;
        let lots = tx.open_lots(merchant, customer).await?;
        let mut book = Book::new(account, lots, now);
        // Due activations and expiries take effect before anything else reads the balance.
        book.activate_due();
        book.expire_due();
        Ok(Loaded { book })
    }

    /// Locks the accounts of a write touching several customers, in one fixed order (by id), so
    /// concurrent writers never deadlock. A single customer is locked by [`Ledger::load`].
    pub(crate) async fn lock_in_order(
        tx: &mut dyn LedgerTx,
        merchant: &str,
        mut customers: Vec<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        customers.sort_unstable();
        customers.dedup();
        if customers.len() > 1 {
            for c in customers {
                tx.lock_account(merchant, c, now).await?;
            }
        }
        Ok(())
    }

    /// Persists a book as one journal transaction.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn save(
        tx: &mut dyn LedgerTx,
        merchant: &str,
        book: &Book,
        kind: i32,
        now: DateTime<Utc>,
        occurred_at: DateTime<Utc>,
        refs: (&str, &str, &str),
        request_id: &str,
        description: &str,
    ) -> Result<String, Error> {
        let transaction_id = new_id();
        // The net change of what the customer has (available + pending), as the contract says.
        let amount: Decimal = book
            .entries()
            .iter()
            .filter(|e| {
                e.customer_id == book.account.customer_id
                    && matches!(e.account, Account::Available | Account::Pending)
            })
            .map(|e| e.amount)
            .sum();
        let record = TxRecord {
            transaction_id: transaction_id.clone(),
            customer_id: book.account.customer_id.clone(),
            kind,
            amount,
            balance_after: book.account.available,
            occurred_at,
            recorded_at: now,
            receipt_id: refs.0.to_owned(),
            refund_id: refs.1.to_owned(),
            hold_id: refs.2.to_owned(),
            request_id: request_id.to_owned(),
            description: description.to_owned(),
        };
        let changed: Vec<_> = book.changed_lots().collect();
        tx.save(
            merchant,
            &book.account,
            book.new_lots(),
            &changed,
            &record,
            book.entries(),
        )
        .await?;
        Ok(transaction_id)
    }

    pub(crate) fn balance(&self, book: &Book, s: &Settings) -> pb::Balance {
        convert::balance(
            &book.account,
            book.lots(),
            s,
            book.now(),
            Duration::days(30),
        )
    }

    /// Runs a mutation idempotently: a repeat of `request_id` with the same payload returns the
    /// stored answer; with another payload it is IDEMPOTENCY_KEY_REUSED.
    pub(crate) async fn mutate<R: Message + Default>(
        &self,
        merchant: &str,
        request_id: &str,
        operation: &'static str,
        request_hash: Vec<u8>,
        command: Command<'_>,
    ) -> Result<R, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", merchant, MAX_ID, true);
        v.id("request_id", request_id, MAX_ID, true);
        v.check()?;
        let mut attempt = 0;
        loop {
            let now = self.clock.now();
            let result: Result<Vec<u8>, Error> = in_write_tx!(&self.db, tx => {
                let tx: &mut dyn LedgerTx = &mut tx;
                match tx.claim_request(merchant, request_id, operation, &request_hash, now).await {
                    Err(e) => Err(Error::from(e)),
                    Ok(Claim::Done { operation: op, request_hash: hash, response }) => {
                        if op == operation && hash == request_hash {
                            Ok(response)
                        } else {
                            Err(Refusal::precondition(
                                "IDEMPOTENCY_KEY_REUSED",
                                format!("request_id `{request_id}` was used for a different request"),
                            )
                            .with("request_id", request_id)
                            .into())
                        }
                    }
                    Ok(Claim::New) => match self.apply(tx, merchant, request_id, &command, now).await {
                        Ok(bytes) => match tx.finish_request(merchant, request_id, &bytes).await {
                            Ok(()) => Ok(bytes),
                            Err(e) => Err(e.into()),
                        },
                        Err(e) => Err(e),
                    },
                }
            });
            match result {
                Err(e) if e.is_retryable_conflict() && attempt < 5 => attempt += 1,
                Err(e) => return Err(e),
                Ok(bytes) => return Ok(R::decode(bytes.as_slice())?),
            }
        }
    }

    async fn apply(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        command: &Command<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<u8>, Error> {
        let s = self.settings_for_write(tx, merchant, now).await?;
        Ok(match command {
            Command::Accrue(r) => self
                .accrue(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::Redeem(r) => self
                .redeem(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::Gift(r) => self
                .gift(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::Adjust(r) => self
                .adjust(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::Reserve(r) => self
                .reserve(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::Commit(r) => self
                .commit_hold(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::Void(r) => self
                .void_hold(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::Receipt(r) => self
                .record_receipt(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::Refund(r) => self
                .refund_receipt(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
            Command::Settings(r) => self
                .update_settings(tx, merchant, r, now)
                .await?
                .encode_to_vec(),
            Command::Merge(r) => self
                .merge_accounts(tx, merchant, request_id, r, &s, now)
                .await?
                .encode_to_vec(),
        })
    }

    // ---- accrual, gifts, redemption, adjustment ------------------------------------------

    pub(crate) fn new_lot(
        grant: &PointsGrant,
        field: &str,
        s: &Settings,
        violations: &mut Violations,
    ) -> NewLot {
        let amount = parse_into(
            &format!("{field}.amount"),
            &grant.amount,
            s.points_scale,
            Sign::Positive,
            violations,
        );
        let activates_at = opt_instant(&grant.activates_at, &format!("{field}.activates_at"))
            .unwrap_or_else(|e| {
                if let Error::Invalid(v) = e {
                    violations.extend(v);
                }
                None
            });
        let expires_at = opt_instant(&grant.expires_at, &format!("{field}.expires_at"))
            .unwrap_or_else(|e| {
                if let Error::Invalid(v) = e {
                    violations.extend(v);
                }
                None
            });
        if let (Some(a), Some(e)) = (activates_at, expires_at) {
            if e <= a {
                violations.add(format!("{field}.expires_at"), "must be after activates_at");
            }
        }
        violations.text(
            &format!("{field}.grant_key"),
            &grant.grant_key,
            MAX_TEXT,
            false,
        );
        let kind = match LotKind::try_from(grant.kind) {
            Ok(LotKind::Unspecified) => LotKind::Purchase as i32,
            Ok(k) => k as i32,
            Err(_) => {
                violations.add(format!("{field}.kind"), "unknown lot kind");
                0
            }
        };
        NewLot {
            lot_id: new_id(),
            kind,
            action: 0,
            amount,
            activates_at,
            expires_at,
            receipt_id: None,
            grant_key: (!grant.grant_key.is_empty()).then(|| grant.grant_key.clone()),
            rule_ids: grant.rule_ids.clone(),
        }
    }

    async fn accrue(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::AccrueRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::AccrueResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        v.text("description", &r.description, MAX_TEXT, false);
        let grant = r.grant.clone().unwrap_or_default();
        let lot = Self::new_lot(&grant, "grant", s, &mut v);
        let occurred_at = opt_instant(&r.occurred_at, "occurred_at")?.unwrap_or(now);
        v.check()?;
        let mut loaded = Self::load(tx, merchant, &r.customer_id, now).await?;
        if let Some(key) = &lot.grant_key {
            if let Some(existing) = tx.lot_by_grant_key(merchant, &r.customer_id, key).await? {
                return Ok(pb::AccrueResponse {
                    lot: Some(convert::lot(&existing, s)),
                    already_granted: true,
                    transaction_id: tx
                        .lot_transaction(merchant, &existing.lot_id)
                        .await?
                        .unwrap_or_default(),
                    balance: Some(self.balance(&loaded.book, s)),
                });
            }
        }
        let i = loaded.book.credit(lot, Account::Issued);
        let lot = loaded.book.lots()[i].clone();
        let transaction_id = Self::save(
            tx,
            merchant,
            &loaded.book,
            tx_kind::ACCRUAL,
            now,
            occurred_at,
            ("", "", ""),
            request_id,
            &r.description,
        )
        .await?;
        Ok(pb::AccrueResponse {
            lot: Some(convert::lot(&lot, s)),
            already_granted: false,
            transaction_id,
            balance: Some(self.balance(&loaded.book, s)),
        })
    }

    async fn gift(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::GrantGiftRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::GrantGiftResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        v.text("description", &r.description, MAX_TEXT, false);
        let grant = r.grant.clone().unwrap_or_default();
        let mut lot = Self::new_lot(&grant, "grant", s, &mut v);
        if grant.kind == 0 {
            lot.kind = LotKind::Gift as i32;
        }
        lot.action = r.action;
        let mut beneficiaries = Vec::new();
        for (i, b) in r.beneficiary_grants.iter().enumerate() {
            v.id(
                &format!("beneficiary_grants[{i}].customer_id"),
                &b.customer_id,
                MAX_ID,
                true,
            );
            let mut l = Self::new_lot(
                &b.grant.clone().unwrap_or_default(),
                &format!("beneficiary_grants[{i}].grant"),
                s,
                &mut v,
            );
            if b.grant.as_ref().is_none_or(|g| g.kind == 0) {
                l.kind = LotKind::Referral as i32;
            }
            l.action = r.action;
            beneficiaries.push((b.customer_id.clone(), l));
        }
        let occurred_at = opt_instant(&r.occurred_at, "occurred_at")?.unwrap_or(now);
        v.check()?;
        // Lock every account involved in one fixed order: no deadlocks between writers.
        let mut customers: Vec<&str> = beneficiaries.iter().map(|(c, _)| c.as_str()).collect();
        customers.push(&r.customer_id);
        Self::lock_in_order(tx, merchant, customers, now).await?;
        let (lot, already, balance) = self
            .grant_one(
                tx,
                merchant,
                request_id,
                &r.customer_id,
                lot,
                s,
                now,
                occurred_at,
                &r.description,
            )
            .await?;
        let mut beneficiary_lots = Vec::new();
        for (customer, l) in beneficiaries {
            let (lot, _, _) = self
                .grant_one(
                    tx,
                    merchant,
                    request_id,
                    &customer,
                    l,
                    s,
                    now,
                    occurred_at,
                    &r.description,
                )
                .await?;
            beneficiary_lots.push(lot);
        }
        Ok(pb::GrantGiftResponse {
            lot: Some(lot),
            already_granted: already,
            beneficiary_lots,
            balance: Some(balance),
        })
    }

    /// Books one gift lot unless its grant key was used; returns (lot, already_granted, balance).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn grant_one(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        customer: &str,
        lot: NewLot,
        s: &Settings,
        now: DateTime<Utc>,
        occurred_at: DateTime<Utc>,
        description: &str,
    ) -> Result<(pb::Lot, bool, pb::Balance), Error> {
        let mut loaded = Self::load(tx, merchant, customer, now).await?;
        if let Some(key) = &lot.grant_key {
            if let Some(existing) = tx.lot_by_grant_key(merchant, customer, key).await? {
                return Ok((
                    convert::lot(&existing, s),
                    true,
                    self.balance(&loaded.book, s),
                ));
            }
        }
        let i = loaded.book.credit(lot, Account::Issued);
        let created = loaded.book.lots()[i].clone();
        Self::save(
            tx,
            merchant,
            &loaded.book,
            tx_kind::GIFT,
            now,
            occurred_at,
            ("", "", ""),
            request_id,
            description,
        )
        .await?;
        Ok((
            convert::lot(&created, s),
            false,
            self.balance(&loaded.book, s),
        ))
    }

    async fn redeem(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::RedeemRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::RedeemResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        v.text("reference", &r.reference, MAX_ID, false);
        v.text("description", &r.description, MAX_TEXT, false);
        let amount = parse_into("amount", &r.amount, s.points_scale, Sign::Positive, &mut v);
        v.check()?;
        let mut loaded = Self::load(tx, merchant, &r.customer_id, now).await?;
        let consumed = loaded
            .book
            .debit(amount, Account::Redeemed)
            .map_err(|e| book_error(e, s))?;
        let transaction_id = Self::save(
            tx,
            merchant,
            &loaded.book,
            tx_kind::REDEMPTION,
            now,
            now,
            ("", "", ""),
            request_id,
            &r.description,
        )
        .await?;
        Ok(pb::RedeemResponse {
            transaction_id,
            consumed: consumed
                .into_iter()
                .map(|(lot_id, a)| pb::LotConsumption {
                    lot_id,
                    amount: s.points(a),
                })
                .collect(),
            balance: Some(self.balance(&loaded.book, s)),
        })
    }

    async fn adjust(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::AdjustRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::AdjustResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        v.text("reason", &r.reason, MAX_TEXT, true);
        v.text("operator", &r.operator, MAX_ID, false);
        let amount = parse_into("amount", &r.amount, s.points_scale, Sign::NonZero, &mut v);
        let expires_at = opt_instant(&r.expires_at, "expires_at")?;
        v.check()?;
        let mut loaded = Self::load(tx, merchant, &r.customer_id, now).await?;
        let mut response = pb::AdjustResponse::default();
        if amount > Decimal::ZERO {
            let i = loaded.book.credit(
                NewLot {
                    lot_id: new_id(),
                    kind: LotKind::Adjustment as i32,
                    action: 0,
                    amount,
                    activates_at: None,
                    expires_at,
                    receipt_id: None,
                    grant_key: None,
                    rule_ids: vec![],
                },
                Account::Adjusted,
            );
            response.lot = Some(convert::lot(&loaded.book.lots()[i], s));
        } else {
            let wanted = -amount;
            let available = loaded.book.account.available.max(Decimal::ZERO);
            if wanted > available && !r.allow_negative {
                return Err(Error::insufficient(
                    s,
                    loaded.book.account.available,
                    wanted,
                ));
            }
            let from_lots = wanted.min(available);
            let consumed = loaded
                .book
                .debit(from_lots, Account::Adjusted)
                .map_err(|e| book_error(e, s))?;
            if wanted > from_lots {
                // allow_negative: the rest becomes a debt later accruals pay off.
                loaded
                    .book
                    .take_back(
                        wanted - from_lots,
                        "",
                        crate::domain::book::Shortfall::AllowNegative(None),
                    )
                    .map_err(|e| book_error(e, s))?;
            }
            response.consumed = consumed
                .into_iter()
                .map(|(lot_id, a)| pb::LotConsumption {
                    lot_id,
                    amount: s.points(a),
                })
                .collect();
        }
        let description = format!(
            "{} (by {})",
            r.reason,
            if r.operator.is_empty() {
                "unknown"
            } else {
                &r.operator
            }
        );
        response.transaction_id = Self::save(
            tx,
            merchant,
            &loaded.book,
            tx_kind::ADJUSTMENT,
            now,
            now,
            ("", "", ""),
            request_id,
            &description,
        )
        .await?;
        response.balance = Some(self.balance(&loaded.book, s));
        Ok(response)
    }

    // ---- holds ---------------------------------------------------------------------------

    async fn reserve(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::ReserveRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::ReserveResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        v.text("reference", &r.reference, MAX_ID, false);
        let amount = parse_into("amount", &r.amount, s.points_scale, Sign::Positive, &mut v);
        let ttl = match &r.ttl {
            None => s.hold_default_ttl,
            Some(d) if d.seconds < 0 || (d.seconds == 0 && d.nanos <= 0) => {
                v.add("ttl", "must be positive");
                s.hold_default_ttl
            }
            Some(d) => std::time::Duration::new(d.seconds as u64, d.nanos.max(0) as u32),
        };
        if ttl > s.hold_max_ttl {
            v.add(
                "ttl",
                format!("must be at most {} s", s.hold_max_ttl.as_secs()),
            );
        }
        v.check()?;
        let mut loaded = Self::load(tx, merchant, &r.customer_id, now).await?;
        let allocations = loaded.book.hold(amount).map_err(|e| book_error(e, s))?;
        let hold = HoldRow {
            hold_id: new_id(),
            customer_id: r.customer_id.clone(),
            amount,
            committed_amount: Decimal::ZERO,
            state: hold_state::ACTIVE,
            reference: r.reference.clone(),
            created_at: now,
            expires_at: now + Duration::from_std(ttl).unwrap_or(Duration::minutes(15)),
            finalized_at: None,
        };
        tx.insert_hold(merchant, &hold, &allocations).await?;
        Self::save(
            tx,
            merchant,
            &loaded.book,
            tx_kind::HOLD,
            now,
            now,
            ("", "", &hold.hold_id),
            request_id,
            &r.reference,
        )
        .await?;
        Ok(pb::ReserveResponse {
            hold: Some(convert::hold(&hold, s)),
            balance: Some(self.balance(&loaded.book, s)),
        })
    }

    /// Loads a hold for finishing; expires it first when its time is up.
    async fn open_hold(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        hold_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(HoldRow, Loaded), Error> {
        let hold = tx
            .hold(merchant, hold_id)
            .await?
            .ok_or_else(|| hold_not_found(hold_id))?;
        let loaded = Self::load(tx, merchant, &hold.customer_id, now).await?;
        // Re-read under the account lock: another writer may have finished it meanwhile.
        let hold = tx.hold(merchant, hold_id).await?.unwrap_or(hold);
        Ok((hold, loaded))
    }

    /// Ends an active hold: commits `commit` points, releases the rest.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn end_hold(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        hold: &mut HoldRow,
        book: &mut Book,
        commit: Decimal,
        state: i32,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let allocations = tx.hold_allocations(merchant, &hold.hold_id).await?;
        book.finish_hold(&allocations, commit);
        // Released points of a lot whose expiry passed while they were held expire now.
        book.expire_due();
        tx.finish_hold(merchant, &hold.hold_id, state, commit, now)
            .await?;
        hold.state = state;
        hold.committed_amount = commit;
        hold.finalized_at = Some(now);
        Ok(())
    }

    async fn commit_hold(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::CommitHoldRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::CommitHoldResponse, Error> {
        let mut v = Violations::new();
        v.id("hold_id", &r.hold_id, MAX_ID, true);
        v.text("description", &r.description, MAX_TEXT, false);
        let requested = if r.amount.is_empty() {
            None
        } else {
            Some(parse_into(
                "amount",
                &r.amount,
                s.points_scale,
                Sign::Positive,
                &mut v,
            ))
        };
        v.check()?;
        let (mut hold, mut loaded) = self.open_hold(tx, merchant, &r.hold_id, now).await?;
        match hold.state {
            // An error rolls this transaction back; the caller releases the hold separately.
            hold_state::ACTIVE if hold.expires_at <= now => {
                return Err(Refusal::precondition(
                    "HOLD_EXPIRED",
                    format!("hold `{}` expired at {}", hold.hold_id, hold.expires_at),
                )
                .into());
            }
            hold_state::ACTIVE => {}
            hold_state::EXPIRED => {
                return Err(Refusal::precondition(
                    "HOLD_EXPIRED",
                    format!("hold `{}` expired", hold.hold_id),
                )
                .into())
            }
            _ => {
                return Err(hold_finalized(
                    &hold,
                    format!("hold `{}` is already finished", hold.hold_id),
                ))
            }
        }
        let amount = requested.unwrap_or(hold.amount);
        if amount > hold.amount {
            return Err(hold_exceeded(&hold, amount, s));
        }
        self.end_hold(
            tx,
            merchant,
            &mut hold,
            &mut loaded.book,
            amount,
            hold_state::COMMITTED,
            now,
        )
        .await?;
        let transaction_id = Self::save(
            tx,
            merchant,
            &loaded.book,
            tx_kind::REDEMPTION,
            now,
            now,
            ("", "", &hold.hold_id),
            request_id,
            &r.description,
        )
        .await?;
        Ok(pb::CommitHoldResponse {
            hold: Some(convert::hold(&hold, s)),
            transaction_id,
            balance: Some(self.balance(&loaded.book, s)),
        })
    }

    async fn void_hold(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::VoidHoldRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::VoidHoldResponse, Error> {
        let mut v = Violations::new();
        v.id("hold_id", &r.hold_id, MAX_ID, true);
        v.check()?;
        let (mut hold, mut loaded) = self.open_hold(tx, merchant, &r.hold_id, now).await?;
        match hold.state {
            hold_state::ACTIVE => {
                let state = if hold.expires_at <= now {
                    hold_state::EXPIRED
                } else {
                    hold_state::VOIDED
                };
                self.end_hold(
                    tx,
                    merchant,
                    &mut hold,
                    &mut loaded.book,
                    Decimal::ZERO,
                    state,
                    now,
                )
                .await?;
                Self::save(
                    tx,
                    merchant,
                    &loaded.book,
                    tx_kind::HOLD_RELEASE,
                    now,
                    now,
                    ("", "", &hold.hold_id),
                    request_id,
                    "hold voided",
                )
                .await?;
            }
            hold_state::VOIDED | hold_state::EXPIRED => {}
            _ => {
                return Err(hold_finalized(
                    &hold,
                    format!("hold `{}` was committed", hold.hold_id),
                ))
            }
        }
        Ok(pb::VoidHoldResponse {
            hold: Some(convert::hold(&hold, s)),
            balance: Some(self.balance(&loaded.book, s)),
        })
    }

    // ---- settings ------------------------------------------------------------------------

    async fn update_settings(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        r: &pb::UpdateLedgerSettingsRequest,
        now: DateTime<Utc>,
    ) -> Result<pb::UpdateLedgerSettingsResponse, Error> {
        let current = Self::settings(tx, merchant).await?.to_proto();
        let requested = r.settings.clone().unwrap_or_default();
        let paths: Vec<String> = r
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "name the fields to change, or \"*\"",
            ));
        }
        let mut next = current.clone();
        for path in &paths {
            match path.as_str() {
                "*" => next = requested.clone(),
                "currency" => next.currency = requested.currency.clone(),
                "money_scale" => next.money_scale = requested.money_scale,
                "points_scale" => next.points_scale = requested.points_scale,
                "shortfall_policy" => next.shortfall_policy = requested.shortfall_policy,
                "max_negative_balance" => {
                    next.max_negative_balance = requested.max_negative_balance.clone()
                }
                "hold_default_ttl" => next.hold_default_ttl = requested.hold_default_ttl,
                "hold_max_ttl" => next.hold_max_ttl = requested.hold_max_ttl,
                "expiry_notice" => next.expiry_notice = requested.expiry_notice,
                "idempotency_retention" => {
                    next.idempotency_retention = requested.idempotency_retention
                }
                "max_receipt_age" => next.max_receipt_age = requested.max_receipt_age,
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!("unknown field `{other}`"),
                    ))
                }
            }
        }
        let parsed = Settings::from_proto(&next)?;
        let old = Settings::from_proto(&current)?;
        if (parsed.points_scale != old.points_scale || parsed.money_scale != old.money_scale)
            && tx.has_transactions(merchant).await?
        {
            return Err(Refusal::precondition(
                "SCALE_LOCKED",
                "scales cannot change once the merchant has entries",
            )
            .into());
        }
        tx.put_settings(merchant, &parsed.to_proto().encode_to_vec(), now)
            .await?;
        self.settings_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(merchant);
        Ok(pb::UpdateLedgerSettingsResponse {
            settings: Some(parsed.to_proto()),
        })
    }
}

/// A validated mutation, by RPC.
pub enum Command<'a> {
    Accrue(&'a pb::AccrueRequest),
    Redeem(&'a pb::RedeemRequest),
    Gift(&'a pb::GrantGiftRequest),
    Adjust(&'a pb::AdjustRequest),
    Reserve(&'a pb::ReserveRequest),
    Commit(&'a pb::CommitHoldRequest),
    Void(&'a pb::VoidHoldRequest),
    Receipt(&'a pb::RecordReceiptRequest),
    Refund(&'a pb::RefundReceiptRequest),
    Settings(&'a pb::UpdateLedgerSettingsRequest),
    Merge(&'a pb::MergeAccountsRequest),
}

/// One public entry point per mutating RPC: run it idempotently through [`Ledger::mutate`].
macro_rules! mutation {
    ($($name:ident: $req:ty => $resp:ty, $op:literal, $variant:ident;)*) => {
        impl Ledger {
            $(
                pub async fn $name(&self, r: &$req) -> Result<$resp, Error> {
                    self.mutate(&r.merchant_id, &r.request_id, $op, digest(r), Command::$variant(r)).await
                }
            )*
        }
    };
}

mutation! {
    accrue_points: pb::AccrueRequest => pb::AccrueResponse, "Accrue", Accrue;
    redeem_points: pb::RedeemRequest => pb::RedeemResponse, "Redeem", Redeem;
    grant_gift: pb::GrantGiftRequest => pb::GrantGiftResponse, "GrantGift", Gift;
    adjust_points: pb::AdjustRequest => pb::AdjustResponse, "Adjust", Adjust;
    reserve_points: pb::ReserveRequest => pb::ReserveResponse, "Reserve", Reserve;
    void: pb::VoidHoldRequest => pb::VoidHoldResponse, "VoidHold", Void;
    record: pb::RecordReceiptRequest => pb::RecordReceiptResponse, "RecordReceipt", Receipt;
    refund: pb::RefundReceiptRequest => pb::RefundReceiptResponse, "RefundReceipt", Refund;
    set_settings: pb::UpdateLedgerSettingsRequest => pb::UpdateLedgerSettingsResponse, "UpdateLedgerSettings", Settings;
    merge: pb::MergeAccountsRequest => pb::MergeAccountsResponse, "MergeAccounts", Merge;
}

impl Ledger {
    pub async fn commit(&self, r: &pb::CommitHoldRequest) -> Result<pb::CommitHoldResponse, Error> {
        let result = self
            .mutate(
                &r.merchant_id,
                &r.request_id,
                "CommitHold",
                digest(r),
                Command::Commit(r),
            )
            .await;
        if matches!(&result, Err(Error::Refused(r)) if r.reason == "HOLD_EXPIRED") {
            // Committing too late releases the points, as the time-out would have.
            self.release_if_expired(&r.merchant_id, &r.hold_id).await?;
        }
        result
    }

    /// Releases an active hold whose time-out has passed (no-op otherwise).
    async fn release_if_expired(&self, merchant: &str, hold_id: &str) -> Result<(), Error> {
        let now = self.clock.now();
        in_write_tx!(&self.db, tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let (mut hold, mut loaded) = self.open_hold(tx, merchant, hold_id, now).await?;
            if hold.state == hold_state::ACTIVE && hold.expires_at <= now {
                self.end_hold(tx, merchant, &mut hold, &mut loaded.book, Decimal::ZERO, hold_state::EXPIRED, now).await?;
                Self::save(tx, merchant, &loaded.book, tx_kind::HOLD_RELEASE, now, now, ("", "", hold_id), "", "hold expired").await?;
            }
            Ok(())
        })
    }

    /// The merchant's settings with defaults.
    pub async fn get_settings(&self, merchant: &str) -> Result<pb::LedgerSettings, Error> {
        in_read_tx!(&self.db, tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            Ok(Self::settings(tx, merchant).await?.to_proto())
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::testing::*;

    fn redeem(customer: &str, request_id: &str, amount: &str) -> pb::RedeemRequest {
        pb::RedeemRequest {
            merchant_id: M.into(),
            request_id: request_id.into(),
            customer_id: customer.into(),
            amount: amount.into(),
            ..Default::default()
        }
    }

    fn commit(hold_id: &str, amount: &str) -> pb::CommitHoldRequest {
        pb::CommitHoldRequest {
            merchant_id: M.into(),
            request_id: rid(),
            hold_id: hold_id.into(),
            amount: amount.into(),
            ..Default::default()
        }
    }

    /// Every refusal of accruals, redemptions, adjustments, holds and settings, with the exact
    /// metadata errors.proto documents for its reason.
    #[tokio::test]
    async fn refusals_carry_the_documented_metadata() {
        let (l, clock) = ledger().await;
        let c = "c-1";
        accrue(&l, M, c, "10").await;
        // A merchant with one decimal of points.
        let m1 = "m-scale-1";
        let one_decimal = pb::LedgerSettings {
            points_scale: 1,
            ..Default::default()
        };
        set(&l, m1, one_decimal, &["points_scale"]).await.unwrap();
        accrue(&l, m1, c, "12.5").await;
        l.redeem_points(&redeem(c, "req-once", "1")).await.unwrap();
        let late = reserve(&l, c, "1").await.unwrap();
        clock.advance(Duration::hours(1));
        let small = reserve(&l, c, "4").await.unwrap();
        let committed = reserve(&l, c, "1").await.unwrap();
        l.commit(&commit(&committed.hold_id, "")).await.unwrap();
        let voided = reserve(&l, c, "1").await.unwrap();
        void(&l, &voided.hold_id).await.unwrap();
        // Available: 10 - 1 redeemed - 1 held (timed out, not yet released) - 4 held - 1 committed.
        let adjust = pb::AdjustRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: c.into(),
            amount: "-30".into(),
            reason: "fraud".into(),
            ..Default::default()
        };
        let scale = pb::LedgerSettings {
            points_scale: 2,
            ..Default::default()
        };
        let fp = Code::FailedPrecondition;
        check(vec![
            (
                "redeem too much",
                refusal(l.redeem_points(&redeem(c, &rid(), "25")).await),
                answer(
                    fp,
                    "INSUFFICIENT_POINTS",
                    &[("available", "3"), ("requested", "25")],
                ),
            ),
            (
                "redeem too much, one decimal",
                refusal(
                    l.redeem_points(&pb::RedeemRequest {
                        merchant_id: m1.into(),
                        ..redeem(c, &rid(), "20")
                    })
                    .await,
                ),
                answer(
                    fp,
                    "INSUFFICIENT_POINTS",
                    &[("available", "12.5"), ("requested", "20.0")],
                ),
            ),
            (
                "reserve too much",
                refusal(reserve(&l, c, "11").await),
                answer(
                    fp,
                    "INSUFFICIENT_POINTS",
                    &[("available", "3"), ("requested", "11")],
                ),
            ),
            (
                "adjust below zero",
                refusal(l.adjust_points(&adjust).await),
                answer(
                    fp,
                    "INSUFFICIENT_POINTS",
                    &[("available", "3"), ("requested", "30")],
                ),
            ),
            (
                "request_id reused",
                refusal(l.redeem_points(&redeem(c, "req-once", "2")).await),
                answer(fp, "IDEMPOTENCY_KEY_REUSED", &[("request_id", "req-once")]),
            ),
            (
                "commit more than held",
                refusal(l.commit(&commit(&small.hold_id, "5")).await),
                answer(fp, "HOLD_AMOUNT_EXCEEDED", &[("held", "4")]),
            ),
            (
                "commit twice",
                refusal(l.commit(&commit(&committed.hold_id, "")).await),
                answer(fp, "HOLD_FINALIZED", &[("state", "HOLD_STATE_COMMITTED")]),
            ),
            (
                "void a committed hold",
                refusal(void(&l, &committed.hold_id).await),
                answer(fp, "HOLD_FINALIZED", &[("state", "HOLD_STATE_COMMITTED")]),
            ),
            (
                "commit a voided hold",
                refusal(l.commit(&commit(&voided.hold_id, "")).await),
                answer(fp, "HOLD_FINALIZED", &[("state", "HOLD_STATE_VOIDED")]),
            ),
            (
                "commit too late",
                refusal(l.commit(&commit(&late.hold_id, "")).await),
                answer(fp, "HOLD_EXPIRED", &[]),
            ),
            (
                "commit an expired hold",
                refusal(l.commit(&commit(&late.hold_id, "")).await),
                answer(fp, "HOLD_EXPIRED", &[]),
            ),
            (
                "no such hold",
                refusal(l.commit(&commit("h-missing", "")).await),
                answer(Code::NotFound, "HOLD_NOT_FOUND", &[]),
            ),
            (
                "scale change after entries",
                refusal(set(&l, M, scale, &["points_scale"]).await),
                answer(fp, "SCALE_LOCKED", &[]),
            ),
            (
                "bad input",
                refusal(l.redeem_points(&redeem("", &rid(), "1")).await),
                answer(Code::InvalidArgument, "VALIDATION_FAILED", &[]),
            ),
        ]);
        let long = |n: usize| "x".repeat(n);
        let described = pb::RedeemRequest {
            description: long(501),
            ..redeem(c, &rid(), "1")
        };
        let referenced = pb::ReserveRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: c.into(),
            amount: "1".into(),
            reference: long(129),
            ..Default::default()
        };
        let no_reason = pb::AdjustRequest {
            request_id: rid(),
            amount: "1".into(),
            reason: String::new(),
            ..adjust.clone()
        };
        let two_limits = pb::RedeemRequest {
            description: long(501),
            ..redeem(&long(129), &rid(), "x")
        };
        check_invalid(vec![
            (
                "a customer id of 129 characters",
                invalid(l.redeem_points(&redeem(&long(129), &rid(), "1")).await),
                limit_exceeded("customer_id", "128"),
                &["customer_id"],
            ),
            (
                "a request id of 129 characters",
                invalid(l.redeem_points(&redeem(c, &long(129), "1")).await),
                limit_exceeded("request_id", "128"),
                &["request_id"],
            ),
            (
                "a description of 501 characters",
                invalid(l.redeem_points(&described).await),
                limit_exceeded("description", "500"),
                &["description"],
            ),
            (
                "a hold reference of 129 characters",
                invalid(l.reserve_points(&referenced).await),
                limit_exceeded("reference", "128"),
                &["reference"],
            ),
            (
                "every violation, the first limit's metadata",
                invalid(l.redeem_points(&two_limits).await),
                limit_exceeded("customer_id", "128"),
                &["customer_id", "description", "amount"],
            ),
            (
                "an adjustment without a reason",
                invalid(l.adjust_points(&no_reason).await),
                answer(Code::InvalidArgument, "VALIDATION_FAILED", &[]),
                &["reason"],
            ),
        ]);
    }
}
