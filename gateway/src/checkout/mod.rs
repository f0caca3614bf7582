//! CheckoutService (FEATURES G1–G3): Calculate → Reserve → Confirm → Refund, or Cancel, and
//! offline receipts, keyed by the register's receipt id per merchant.
//!
//! - [`validate`]: input limits, checked before anything else (pure).
//! - [`compose`]: one evaluation from cards, ledger and rules.
//! - [`store`]: the checkout rows and their stored answers.
//! - [`present`]: display and slip lines.
//!
//! - [`state`]: which step may move a checkout from which state.
//! - [`booked`]: a booked receipt's answer rebuilt from the ledger's receipt.
//!
//! Every step is idempotent: answers are kept by request id (`requests`), a confirmed receipt
//! is found again by its receipt id and content, and what the gateway asks of the ledger
//! carries keys from [`crate::idempotency`], so a retry at any point books nothing twice. The
//! ledger is the truth about what is booked: a Confirm whose first answer was lost is answered
//! from the ledger's receipt, never evaluated again. Calls for one receipt are serialised in
//! the process; across replicas every write of a checkout is conditional on the version it was
//! read at, and the loser reads again and decides again.

pub mod booked;
pub mod compose;
pub mod present;
pub mod state;
pub mod store;
pub mod validate;

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::Utc;
use kopilka_proto::cards as cards_pb;
use kopilka_proto::gateway::checkout_service_server::CheckoutService;
use kopilka_proto::gateway::*;
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::rules as rules_pb;
use kopilka_proto::types::BasketLine;
use kopilka_proto::wkt::{Duration as ProtoDuration, Timestamp};
use kopilka_runtime::{status, timestamps};
use tokio::sync::{Mutex, MutexGuard};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, TerminalRef};
use crate::deps::{Deadline, Retry, CARDS, LEDGER};
use crate::error::{Error, Result};
use crate::requests::digest;
use crate::tier_retry::{self, Decided};
use crate::{dep_call, Gateway};

use crate::idempotency;
use compose::{Composer, Evaluated, Known, NeedsCache, Receipt};
use state::{is_booked, Op, Refusal};
use store::{Answer, Checkouts, Stored};
use validate::{Violations, MAX_ID, MAX_TEXT};

/// Hold time-out when the register sets none, and the longest allowed.
const DEFAULT_HOLD_TTL: std::time::Duration = std::time::Duration::from_secs(5 * 60);
const MAX_HOLD_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// How old an offline receipt may be.
const OFFLINE_MAX_AGE: chrono::Duration = chrono::Duration::days(30);
const LOCK_STRIPES: usize = 1024;

/// The CheckoutService handlers.
#[derive(Clone)]
pub struct CheckoutApi {
    gw: Gateway,
    checkouts: Checkouts,
    needs: NeedsCache,
    locks: Arc<Vec<Mutex<()>>>,
}

/// What a Confirm or an offline submission books.
struct Booking<'a> {
    request_id: &'a str,
    receipt_id: &'a str,
    buyer: Option<&'a Buyer>,
    lines: &'a [BasketLine],
    promo_codes: &'a [String],
    redeem_points: &'a str,
    occurred_at: Option<Timestamp>,
    fiscal_ref: &'a str,
    register: Option<&'a CustomerDetails>,
    offline: bool,
    content_hash: Vec<u8>,
    /// Digest of the whole request, for its answer by request id.
    request_hash: Vec<u8>,
}

impl Booking<'_> {
    fn op(&self) -> Op {
        if self.offline {
            Op::Offline
        } else {
            Op::Confirm
        }
    }

    fn operation(&self) -> &'static str {
        if self.offline {
            "offline"
        } else {
            "confirm"
        }
    }

    /// The answers a booking stores: by receipt (`receipt_key`) and by request id.
    fn answers<'k>(&'k self, receipt_key: &'k str, answer: &ConfirmResponse) -> [Answer<'k>; 2] {
        use prost::Message;
        [
            Answer {
                request_id: receipt_key,
                operation: "book",
                request_hash: &self.content_hash,
                response: answer.encode_to_vec(),
            },
            Answer {
                request_id: self.request_id,
                operation: self.operation(),
                request_hash: &self.request_hash,
                response: self.outer_answer(answer),
            },
        ]
    }

    /// The answer by request id: a ConfirmResponse, or for an offline receipt its own shape.
    fn outer_answer(&self, answer: &ConfirmResponse) -> Vec<u8> {
        use prost::Message;
        if self.offline {
            SubmitOfflineReceiptResponse {
                checkout: answer.checkout.clone(),
                balance: answer.balance.clone(),
            }
            .encode_to_vec()
        } else {
            answer.encode_to_vec()
        }
    }
}

/// FAILED_PRECONDITION CHECKOUT_STATE_CONFLICT for a receipt in `state`.
fn conflict(receipt_id: &str, state: CheckoutState, hint: &str) -> Error {
    status::Refusal::precondition(
        "CHECKOUT_STATE_CONFLICT",
        format!("receipt {receipt_id} is {}: {hint}", state::word(state)),
    )
    .with("state", state.as_str_name())
    .with("receipt_id", receipt_id)
    .into()
}

/// The checkout `stored` may take `op`, or the conflict that says why not.
fn allowed(receipt_id: &str, stored: Option<&Stored>, op: Op) -> Result<CheckoutState> {
    let from = stored.map(Stored::state);
    state::next(from, op).map_err(|refusal| {
        let hint = match refusal {
            Refusal::Conflict { hint } => hint,
            Refusal::Keep => "it keeps what was booked",
        };
        conflict(receipt_id, from.unwrap_or(CheckoutState::Unspecified), hint)
    })
}

/// How often a step reads again after losing a write to a concurrent one.
const MAX_RACES: usize = 4;

fn lost_race(receipt_id: &str) -> Error {
    Error::Aborted(format!(
        "receipt {receipt_id} kept changing under concurrent calls; read it and retry"
    ))
}

fn not_found(receipt_id: &str) -> Error {
    Error::not_found(
        "CHECKOUT_NOT_FOUND",
        format!("no checkout with receipt_id {receipt_id}"),
    )
}

fn now_proto() -> Timestamp {
    timestamps::to_proto(Utc::now())
}

impl CheckoutApi {
    pub fn new(gw: Gateway, db: kopilka_runtime::Db) -> Self {
        Self {
            gw,
            checkouts: Checkouts::new(db),
            needs: NeedsCache::default(),
            locks: Arc::new((0..LOCK_STRIPES).map(|_| Mutex::new(())).collect()),
        }
    }

    async fn lock(&self, merchant_id: &str, receipt_id: &str) -> MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (merchant_id, receipt_id).hash(&mut hasher);
        self.locks[(hasher.finish() as usize) % LOCK_STRIPES]
            .lock()
            .await
    }

    fn composer<'a>(
        &'a self,
        caller: &'a Caller,
        terminal: &'a TerminalRef,
        deadline: Deadline,
    ) -> Composer<'a> {
        Composer {
            gw: &self.gw,
            caller,
            terminal,
            deadline,
            needs: &self.needs,
        }
    }

    /// The answer of an evaluation for `buyer` (after a purchase: with the tier just decided).
    fn calculation(&self, caller: &Caller, ev: &Evaluated, buyer: Option<&Known>) -> Calculation {
        let r = &ev.result;
        let totals = r.totals.clone().unwrap_or_default();
        let currency = if r.currency.is_empty() {
            caller.merchant.currency.clone()
        } else {
            r.currency.clone()
        };
        Calculation {
            customer: buyer.map(|k| summary(k, caller)),
            lines: r.lines.clone(),
            display_lines: present::display_lines(&totals, &currency, ev.balance.as_ref()),
            totals: Some(totals),
            balance: ev.balance.clone(),
            hints: r.hints.clone(),
            explanations: r.explanations.clone(),
            program_version: r.program_version,
            currency,
            applied_promo_codes: r.applied_promo_codes.clone(),
        }
    }

    fn new_checkout(&self, receipt_id: &str, terminal: &TerminalRef) -> Stored {
        let now = now_proto();
        Stored {
            checkout: Checkout {
                receipt_id: receipt_id.to_owned(),
                store_id: terminal.store_id.clone(),
                terminal_id: terminal.terminal_id.clone(),
                created_at: Some(now),
                updated_at: Some(now),
                ..Default::default()
            },
            hold_id: String::new(),
            content_hash: None,
            version: 0,
        }
    }

    /// Identifies the buyer; with `register` an unknown phone becomes a new customer.
    async fn identify(
        &self,
        c: &Composer<'_>,
        buyer: Option<&Buyer>,
        levels: u32,
        register: Option<(&str, &CustomerDetails)>,
    ) -> Result<Option<Known>> {
        match c.identify(buyer, levels).await {
            Err(e) if e.reason().as_deref() == Some("CARD_NOT_FOUND") => {
                let (Some((request_id, details)), Some(buyer::Who::Identifier(input))) =
                    (register, buyer.and_then(|b| b.who.as_ref()))
                else {
                    return Err(e);
                };
                let registered = crate::customers::register(
                    &self.gw,
                    c.caller,
                    Some(c.terminal),
                    c.deadline,
                    request_id,
                    &input.raw,
                    &[],
                    Some(details),
                    "",
                )
                .await?;
                let mut known = c.by_id(&registered.customer.customer_id, levels).await?;
                known.registered_now = registered.registered_now;
                Ok(Some(known))
            }
            other => other,
        }
    }

    async fn calculate_inner(
        &self,
        request: Request<CalculateRequest>,
    ) -> Result<CalculateResponse> {
        let deadline = Deadline::of(&request);
        let caller = self.gw.auth.terminal_or_admin(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::default();
        v.id("receipt_id", &req.receipt_id, MAX_ID, false);
        validate::buyer(&mut v, "buyer", req.buyer.as_ref(), false);
        validate::lines(&mut v, "lines", &req.lines, &caller.merchant.currency);
        validate::promo_codes(&mut v, "promo_codes", &req.promo_codes);
        validate::points(&mut v, "redeem_points", &req.redeem_points, false);
        v.not_future(
            "occurred_at",
            req.occurred_at.as_ref(),
            Utc::now(),
            validate::MAX_CLOCK_SKEW,
        );
        v.id("terminal_id", &req.terminal_id, MAX_ID, false);
        v.enumeration::<rules_pb::ExplainLevel>("explain", req.explain);
        v.check()?;
        let terminal = self.gw.auth.terminal_for(&caller, &req.terminal_id).await?;
        let c = self.composer(&caller, &terminal, deadline);
        let levels = c.referral_levels(None).await?;
        let mut preview = false;
        let buyer = match c.identify(req.buyer.as_ref(), levels).await {
            Err(e)
                if req.preview_new_customer && e.reason().as_deref() == Some("CARD_NOT_FOUND") =>
            {
                preview = true;
                Some(self.preview_customer(&c).await?)
            }
            other => other?,
        };
        let evaluated = c
            .evaluate(
                buyer,
                Receipt {
                    lines: &req.lines,
                    promo_codes: &req.promo_codes,
                    redeem_points: &req.redeem_points,
                    occurred_at: req.occurred_at,
                    explain: req.explain,
                    held_points: None,
                },
            )
            .await?;
        let calculation = self.calculation(&caller, &evaluated, evaluated.buyer.as_ref());
        if !req.receipt_id.is_empty() {
            let _guard = self.lock(caller.merchant_id(), &req.receipt_id).await;
            let stored = self
                .checkouts
                .get(caller.merchant_id(), &req.receipt_id)
                .await?;
            // Booked or cancelled: the stored checkout keeps what was booked.
            if let Ok(next) = state::next(stored.as_ref().map(Stored::state), Op::Calculate) {
                let mut stored =
                    stored.unwrap_or_else(|| self.new_checkout(&req.receipt_id, &terminal));
                stored.checkout.state = next as i32;
                // A previewed newcomer has no customer id yet.
                stored.checkout.customer_id = if preview {
                    String::new()
                } else {
                    customer_id_of(&evaluated)
                };
                stored.checkout.calculation = Some(calculation.clone());
                stored.checkout.updated_at = Some(now_proto());
                // Lost to a concurrent step: the calculation is still this call's answer, and
                // the stored checkout is what that step made of it.
                let _ = self
                    .checkouts
                    .put_calculation(caller.merchant_id(), &stored)
                    .await?;
            }
        }
        Ok(CalculateResponse {
            calculation: Some(calculation),
        })
    }

    /// A customer that does not exist yet, as registration would make them (default tier).
    async fn preview_customer(&self, c: &Composer<'_>) -> Result<Known> {
        let tiers = dep_call!(
            self.gw,
            CARDS,
            c.deadline,
            Retry::Idempotent,
            tiers.list_tiers(cards_pb::ListTiersRequest {
                merchant_id: c.caller.merchant_id().to_owned(),
            })
        )?;
        Ok(Known {
            customer: cards_pb::Customer {
                customer_id: "preview-new-customer".to_owned(),
                registered_at: Some(now_proto()),
                ..Default::default()
            },
            tier: tiers.tiers.into_iter().find(|t| t.is_default),
            matched: None,
            input_kind: 0,
            referrers: Vec::new(),
            registered_now: true,
        })
    }

    async fn reserve_inner(&self, request: Request<ReserveRequest>) -> Result<ReserveResponse> {
        let deadline = Deadline::of(&request);
        let caller = self.gw.auth.terminal_or_admin(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::default();
        v.id("request_id", &req.request_id, MAX_ID, true);
        v.id("receipt_id", &req.receipt_id, MAX_ID, true);
        validate::buyer(&mut v, "buyer", req.buyer.as_ref(), true);
        validate::lines(&mut v, "lines", &req.lines, &caller.merchant.currency);
        validate::promo_codes(&mut v, "promo_codes", &req.promo_codes);
        validate::points(&mut v, "points", &req.points, true);
        let ttl = match &req.ttl {
            None => DEFAULT_HOLD_TTL,
            Some(d) => match std::time::Duration::try_from(*d) {
                Ok(ttl) if !ttl.is_zero() && ttl <= MAX_HOLD_TTL => ttl,
                _ => {
                    v.add("ttl", "must be positive and at most 30 minutes");
                    DEFAULT_HOLD_TTL
                }
            },
        };
        v.id("terminal_id", &req.terminal_id, MAX_ID, false);
        v.check()?;
        let terminal = self.gw.auth.terminal_for(&caller, &req.terminal_id).await?;
        let merchant = caller.merchant_id().to_owned();
        let _guard = self.lock(&merchant, &req.receipt_id).await;
        self.gw
            .requests
            .once(&merchant, &req.request_id, "reserve", &req, || async {
                let stored = self.checkouts.get(&merchant, &req.receipt_id).await?;
                allowed(&req.receipt_id, stored.as_ref(), Op::Reserve)?;
                let previous = stored
                    .as_ref()
                    .filter(|s| s.state() == CheckoutState::Reserved)
                    .map(|s| s.hold_id.clone());
                // The version read is part of the hold's key: a retry after a crash gets the
                // same hold, a retry after losing a race (below) a new one.
                let version = stored.as_ref().map_or(0, |s| s.version).to_string();
                let c = self.composer(&caller, &terminal, deadline);
                let levels = c.referral_levels(None).await?;
                let buyer = self.identify(&c, req.buyer.as_ref(), levels, None).await?;
                // A new reservation replaces the old one: release it first.
                if let Some(hold_id) = &previous {
                    let key =
                        idempotency::from_caller("reserve-replace", &req.request_id, &[hold_id]);
                    self.void_hold(&c, &key, hold_id).await?;
                }
                let evaluated = c
                    .evaluate(
                        buyer,
                        Receipt {
                            lines: &req.lines,
                            promo_codes: &req.promo_codes,
                            redeem_points: &req.points,
                            occurred_at: None,
                            explain: 0,
                            held_points: None,
                        },
                    )
                    .await?;
                let customer_id = customer_id_of(&evaluated);
                let held = dep_call!(
                    self.gw,
                    LEDGER,
                    deadline,
                    Retry::Idempotent,
                    ledger.reserve(ledger_pb::ReserveRequest {
                        merchant_id: merchant.clone(),
                        request_id: idempotency::from_caller(
                            "reserve",
                            &req.request_id,
                            &[&version]
                        ),
                        customer_id: customer_id.clone(),
                        amount: req.points.clone(),
                        ttl: Some(ProtoDuration::from(ttl)),
                        reference: req.receipt_id.clone(),
                    })
                )?;
                let hold = held.hold.unwrap_or_default();
                let mut calculation =
                    self.calculation(&caller, &evaluated, evaluated.buyer.as_ref());
                calculation.balance = held.balance;
                let mut stored =
                    stored.unwrap_or_else(|| self.new_checkout(&req.receipt_id, &terminal));
                stored.hold_id = hold.hold_id.clone();
                stored.checkout.state = CheckoutState::Reserved as i32;
                stored.checkout.customer_id = customer_id;
                stored.checkout.calculation = Some(calculation);
                stored.checkout.hold = Some(CheckoutHold {
                    points: hold.amount,
                    expires_at: hold.expires_at,
                    state: hold.state,
                });
                stored.checkout.updated_at = Some(now_proto());
                if self.checkouts.put(&merchant, &stored).await?.is_err() {
                    // Another replica moved the checkout meanwhile (a Cancel, a Confirm): what
                    // was just held must not outlive this call.
                    let key =
                        idempotency::from_caller("reserve-lost", &req.request_id, &[&hold.hold_id]);
                    self.void_hold(&c, &key, &hold.hold_id).await?;
                    return Err(lost_race(&req.receipt_id));
                }
                Ok(ReserveResponse {
                    checkout: Some(stored.checkout),
                })
            })
            .await
    }

    /// Voids a hold; `key` is the ledger request id of this void.
    async fn void_hold(&self, c: &Composer<'_>, key: &str, hold_id: &str) -> Result<()> {
        dep_call!(
            self.gw,
            LEDGER,
            c.deadline,
            Retry::Idempotent,
            ledger.void_hold(ledger_pb::VoidHoldRequest {
                merchant_id: c.caller.merchant_id().to_owned(),
                request_id: key.to_owned(),
                hold_id: hold_id.to_owned(),
            })
        )
        .map(|_| ())
    }

    /// The ledger's receipt under `receipt_id`, if it has one.
    async fn ledger_receipt(
        &self,
        c: &Composer<'_>,
        receipt_id: &str,
    ) -> Result<Option<ledger_pb::Receipt>> {
        let found = dep_call!(
            self.gw,
            LEDGER,
            c.deadline,
            Retry::Idempotent,
            ledger.get_receipt(ledger_pb::GetReceiptRequest {
                merchant_id: c.caller.merchant_id().to_owned(),
                receipt_id: receipt_id.to_owned(),
            })
        );
        match found {
            Ok(found) => Ok(found.receipt),
            Err(e) if e.reason().as_deref() == Some("RECEIPT_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn confirm_inner(&self, request: Request<ConfirmRequest>) -> Result<ConfirmResponse> {
        let deadline = Deadline::of(&request);
        let caller = self.gw.auth.terminal_or_admin(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::default();
        v.id("request_id", &req.request_id, MAX_ID, true);
        v.id("receipt_id", &req.receipt_id, MAX_ID, true);
        validate::buyer(&mut v, "buyer", req.buyer.as_ref(), false);
        validate::lines(&mut v, "lines", &req.lines, &caller.merchant.currency);
        validate::promo_codes(&mut v, "promo_codes", &req.promo_codes);
        validate::points(&mut v, "redeem_points", &req.redeem_points, false);
        v.not_future(
            "occurred_at",
            req.occurred_at.as_ref(),
            Utc::now(),
            validate::MAX_CLOCK_SKEW,
        );
        v.id("terminal_id", &req.terminal_id, MAX_ID, false);
        v.text("fiscal_ref", &req.fiscal_ref, MAX_ID, false);
        details(
            &mut v,
            "register_if_unknown",
            req.register_if_unknown.as_ref(),
        );
        v.check()?;
        let terminal = self.gw.auth.terminal_for(&caller, &req.terminal_id).await?;
        let content = ConfirmRequest {
            buyer: req.buyer.clone(),
            lines: req.lines.clone(),
            promo_codes: req.promo_codes.clone(),
            redeem_points: req.redeem_points.clone(),
            occurred_at: req.occurred_at,
            ..Default::default()
        };
        let merchant = caller.merchant_id().to_owned();
        let _guard = self.lock(&merchant, &req.receipt_id).await;
        let request_hash = digest(&req);
        if let Some(answer) = self
            .gw
            .requests
            .find(&merchant, &req.request_id, "confirm", &request_hash)
            .await?
        {
            return Ok(answer);
        }
        self.book(
            &caller,
            &terminal,
            deadline,
            Booking {
                request_id: &req.request_id,
                receipt_id: &req.receipt_id,
                buyer: req.buyer.as_ref(),
                lines: &req.lines,
                promo_codes: &req.promo_codes,
                redeem_points: &req.redeem_points,
                occurred_at: req.occurred_at,
                fiscal_ref: &req.fiscal_ref,
                register: req.register_if_unknown.as_ref(),
                offline: false,
                content_hash: digest(&content),
                request_hash,
            },
        )
        .await
    }

    /// Books a receipt (Confirm, SubmitOfflineReceipt); the receipt's lock is held.
    async fn book(
        &self,
        caller: &Caller,
        terminal: &TerminalRef,
        deadline: Deadline,
        b: Booking<'_>,
    ) -> Result<ConfirmResponse> {
        let merchant = caller.merchant_id().to_owned();
        let stored = self.checkouts.get(&merchant, b.receipt_id).await?;
        if let Some(s) = stored.as_ref().filter(|s| is_booked(s.state())) {
            return self.answer_booked(&merchant, s, &b).await;
        }
        allowed(b.receipt_id, stored.as_ref(), b.op())?;
        let c = self.composer(caller, terminal, deadline);
        let (recorded, evaluated, sold_at) = match self.record(&c, &b, stored.as_ref()).await {
            Ok(done) => done,
            // Refused before or by the ledger: an earlier attempt may have booked the receipt
            // and lost its answer (a crash or a timeout before the commit below). Then the
            // ledger's receipt is the answer; this attempt's evaluation is not.
            Err(error) => return self.recover(&c, &b, stored, error).await,
        };
        let totals = evaluated.result.totals.clone().unwrap_or_default();
        let known = evaluated.buyer.clone();
        let balance = match &known {
            Some(_) => recorded.balance.or_else(|| evaluated.balance.clone()),
            None => recorded.balance,
        };
        let tier = match &evaluated.context {
            Some(context) => {
                self.tier_request(
                    &c,
                    context,
                    evaluated.result.program_version,
                    &totals.net_amount,
                    sold_at,
                )
                .await
            }
            None => None,
        };
        let mut stored =
            self.booked_checkout(stored, &b, terminal, recorded.receipt.unwrap_or_default());
        stored.checkout.customer_id = customer_id_of(&evaluated);
        stored.checkout.calculation = Some(self.calculation(caller, &evaluated, known.as_ref()));
        self.commit_booked(&c, &b, stored, known, balance, tier)
            .await
    }

    /// Evaluates the receipt and records it in the ledger.
    async fn record(
        &self,
        c: &Composer<'_>,
        b: &Booking<'_>,
        stored: Option<&Stored>,
    ) -> Result<(ledger_pb::RecordReceiptResponse, Evaluated, Timestamp)> {
        let reserved = stored.filter(|s| s.state() == CheckoutState::Reserved);
        let hold_id = reserved.map(|s| s.hold_id.clone()).unwrap_or_default();
        let held_points = reserved.and_then(|s| s.checkout.hold.as_ref().map(|h| h.points.clone()));
        let at = if b.offline {
            b.occurred_at.as_ref()
        } else {
            None
        };
        let levels = c.referral_levels(at).await?;
        let buyer = self
            .identify(c, b.buyer, levels, b.register.map(|d| (b.request_id, d)))
            .await?;
        let redeeming = b
            .redeem_points
            .parse::<rust_decimal::Decimal>()
            .is_ok_and(|p| !p.is_zero());
        if buyer.is_none() && redeeming {
            return Err(Error::precondition(
                "REDEMPTION_NOT_ALLOWED",
                "an anonymous receipt cannot be paid with points: identify the buyer",
            ));
        }
        let occurred_at = b.occurred_at.unwrap_or_else(now_proto);
        let evaluated = c
            .evaluate(
                buyer,
                Receipt {
                    lines: b.lines,
                    promo_codes: b.promo_codes,
                    redeem_points: b.redeem_points,
                    occurred_at: Some(occurred_at),
                    explain: 0,
                    held_points: held_points.as_deref(),
                },
            )
            .await?;
        let result = &evaluated.result;
        let totals = result.totals.clone().unwrap_or_default();
        let input = ledger_pb::ReceiptInput {
            receipt_id: b.receipt_id.to_owned(),
            customer_id: customer_id_of(&evaluated),
            store_id: c.terminal.store_id.clone(),
            terminal_id: c.terminal.terminal_id.clone(),
            occurred_at: Some(occurred_at),
            currency: if result.currency.is_empty() {
                c.caller.merchant.currency.clone()
            } else {
                result.currency.clone()
            },
            program_version: result.program_version,
            lines: receipt_lines(b.lines, &result.lines),
            redeem_points: totals.redeem_points.clone(),
            hold_id,
            accruals: result.accruals.clone(),
            beneficiary_grants: result.referral_rewards.clone(),
            stamp_changes: result.stamp_changes.clone(),
            promo_codes: result.applied_promo_codes.clone(),
            offline: b.offline,
            caller_digest: b.content_hash.clone(),
        };
        let recorded = dep_call!(
            self.gw,
            LEDGER,
            c.deadline,
            Retry::Idempotent,
            ledger.record_receipt(ledger_pb::RecordReceiptRequest {
                merchant_id: c.caller.merchant_id().to_owned(),
                request_id: idempotency::derived("book", &[b.receipt_id]),
                receipt: Some(input),
            })
        )
        // The gateway built this receipt from input it checked: a refusal is its own fault.
        .map_err(|e| e.for_caller(&[]))?;
        Ok((recorded, evaluated, occurred_at))
    }

    /// A Confirm refused with `error`: when the ledger holds the receipt with this content
    /// (an earlier attempt booked it and lost its answer), the answer built from the ledger's
    /// receipt; with other content a conflict; otherwise `error`.
    async fn recover(
        &self,
        c: &Composer<'_>,
        b: &Booking<'_>,
        stored: Option<Stored>,
        error: Error,
    ) -> Result<ConfirmResponse> {
        let receipt = match self.ledger_receipt(c, b.receipt_id).await {
            Ok(Some(receipt)) => receipt,
            Ok(None) => return Err(error),
            Err(lookup) => {
                tracing::warn!(%lookup, %error, receipt_id = b.receipt_id, "cannot tell whether the ledger booked the receipt");
                return Err(error);
            }
        };
        if receipt.caller_digest != b.content_hash || receipt.offline != b.offline {
            tracing::info!(%error, receipt_id = b.receipt_id, "receipt id already booked with other content");
            return Err(conflict(
                b.receipt_id,
                CheckoutState::Confirmed,
                "it was booked with other content",
            ));
        }
        tracing::info!(%error, receipt_id = b.receipt_id, "answering a receipt booked by an earlier attempt");
        let known = match receipt.customer_id.as_str() {
            "" => None,
            id => Some(c.by_id(id, 0).await?),
        };
        let (balance, tier) = match (&known, receipt.occurred_at) {
            (Some(k), Some(sold_at)) => {
                let context = c.context_before(k, sold_at).await?;
                let net = receipt
                    .summary
                    .as_ref()
                    .map(|s| s.net_amount.clone())
                    .unwrap_or_default();
                let tier = self
                    .tier_request(c, &context, receipt.program_version, &net, sold_at)
                    .await;
                (self.balance(c, &receipt.customer_id).await?, tier)
            }
            _ => (None, None),
        };
        let customer = known.as_ref().map(|k| summary(k, c.caller));
        let calculation = booked::calculation(&receipt, customer);
        let customer_id = receipt.customer_id.clone();
        let mut stored = self.booked_checkout(stored, b, c.terminal, receipt);
        stored.checkout.customer_id = customer_id;
        stored.checkout.calculation = Some(calculation);
        self.commit_booked(c, b, stored, known, balance, tier).await
    }

    /// `stored` (or a new checkout) as booked with `receipt`.
    fn booked_checkout(
        &self,
        stored: Option<Stored>,
        b: &Booking<'_>,
        terminal: &TerminalRef,
        receipt: ledger_pb::Receipt,
    ) -> Stored {
        let mut stored = stored.unwrap_or_else(|| self.new_checkout(b.receipt_id, terminal));
        stored.checkout.state = CheckoutState::Confirmed as i32;
        stored.checkout.receipt = Some(receipt);
        stored.checkout.offline = b.offline;
        stored.checkout.fiscal_ref = b.fiscal_ref.to_owned();
        stored.checkout.store_id = terminal.store_id.clone();
        stored.checkout.terminal_id = terminal.terminal_id.clone();
        if let Some(hold) = stored.checkout.hold.as_mut() {
            hold.state = ledger_pb::HoldState::Committed as i32;
        }
        stored.checkout.updated_at = Some(now_proto());
        stored.content_hash = Some(b.content_hash.clone());
        stored
    }

    /// The answer to a booked receipt, for the buyer `known` with `balance` after it.
    fn confirm_answer(
        &self,
        stored: &Stored,
        known: Option<&Known>,
        balance: Option<ledger_pb::Balance>,
        tier_changed: bool,
    ) -> ConfirmResponse {
        let calculation = stored.checkout.calculation.clone().unwrap_or_default();
        let customer = calculation.customer.clone();
        ConfirmResponse {
            print_lines: present::print_lines(
                &calculation.totals.unwrap_or_default(),
                &calculation.currency,
                balance.as_ref(),
                known
                    .and_then(|k| k.tier.as_ref())
                    .map(|t| t.name.as_str())
                    .filter(|n| !n.is_empty()),
            ),
            checkout: Some(stored.checkout.clone()),
            balance,
            customer,
            tier_changed,
        }
    }

    /// A repeat of a receipt already booked here: its answer for the same content, else a
    /// conflict.
    async fn answer_booked(
        &self,
        merchant: &str,
        s: &Stored,
        b: &Booking<'_>,
    ) -> Result<ConfirmResponse> {
        let receipt_key = idempotency::local("receipt", b.receipt_id);
        if s.content_hash.as_deref() == Some(b.content_hash.as_slice())
            && s.checkout.offline == b.offline
        {
            if let Some(mut answer) = self
                .gw
                .requests
                .find::<ConfirmResponse>(merchant, &receipt_key, "book", &b.content_hash)
                .await?
            {
                answer.checkout = Some(s.checkout.clone());
                self.gw
                    .requests
                    .save_bytes(
                        merchant,
                        b.request_id,
                        b.operation(),
                        &b.request_hash,
                        b.outer_answer(&answer),
                    )
                    .await?;
                return Ok(answer);
            }
        }
        Err(conflict(
            b.receipt_id,
            s.state(),
            "it was booked with other content",
        ))
    }

    /// Stores the booked checkout with its answers (by receipt and by request id) and the tier
    /// decision still to make, in one commit; then makes the decision. The ledger has booked
    /// the receipt, so a checkout changed meanwhile by another replica (a Cancel that read it
    /// before the booking) is overwritten: the ledger is the truth.
    async fn commit_booked(
        &self,
        c: &Composer<'_>,
        b: &Booking<'_>,
        mut stored: Stored,
        mut known: Option<Known>,
        balance: Option<ledger_pb::Balance>,
        tier: Option<tier_retry::Pending>,
    ) -> Result<ConfirmResponse> {
        let merchant = c.caller.merchant_id();
        let receipt_key = idempotency::local("receipt", b.receipt_id);
        let mut answer = self.confirm_answer(&stored, known.as_ref(), balance.clone(), false);
        let mut races = 0;
        let version = loop {
            let answers = b.answers(&receipt_key, &answer);
            if let Ok(version) = self
                .checkouts
                .commit(merchant, &stored, &answers, tier.as_ref())
                .await?
            {
                break version;
            }
            races += 1;
            if races >= MAX_RACES {
                return Err(lost_race(b.receipt_id));
            }
            match self.checkouts.get(merchant, b.receipt_id).await? {
                // Another replica committed this very receipt first.
                Some(now) if is_booked(now.state()) => {
                    return self.answer_booked(merchant, &now, b).await
                }
                Some(now) => {
                    if now.state() == CheckoutState::Cancelled {
                        tracing::warn!(receipt_id = b.receipt_id, "a Cancel stored before the ledger booked the receipt is overwritten: the receipt is booked");
                    }
                    stored.version = now.version;
                    stored.checkout.created_at = now.checkout.created_at;
                }
                None => stored.version = 0,
            }
        };
        stored.version = version;
        // After the purchase: the tier (R13). The receipt is booked and stored whatever happens
        // here; a decision that fails now stays in tier_retries for the retry task.
        let Some(pending) = tier else {
            return Ok(answer);
        };
        let decided = tier_retry::decide(&self.gw, c.deadline, pending.request, b.receipt_id).await;
        let upgraded = match decided {
            Ok(Decided::Upgraded(tier)) => tier,
            Ok(other) => {
                if other == Decided::NoProgression {
                    let version = stored
                        .checkout
                        .calculation
                        .as_ref()
                        .map_or(0, |c| c.program_version);
                    self.needs.no_progression(merchant, version).await;
                }
                self.checkouts
                    .tier_decided(merchant, b.receipt_id, None)
                    .await?;
                return Ok(answer);
            }
            Err(error) => {
                tracing::warn!(%error, receipt_id = b.receipt_id, "tier decision after purchase failed; kept for a retry");
                return Ok(answer);
            }
        };
        if let Some(k) = known.as_mut() {
            k.tier = upgraded;
            let customer = summary(k, c.caller);
            if let Some(calculation) = stored.checkout.calculation.as_mut() {
                calculation.customer = Some(customer);
            }
        }
        answer = self.confirm_answer(&stored, known.as_ref(), balance, true);
        let answers = b.answers(&receipt_key, &answer);
        self.checkouts
            .tier_decided(merchant, b.receipt_id, Some((&stored, &answers)))
            .await?;
        Ok(answer)
    }

    /// The DecideTier a purchase of `amount` at `sold_at` asks for, or `None` when the program
    /// version has no tier progression.
    async fn tier_request(
        &self,
        c: &Composer<'_>,
        context: &rules_pb::CustomerContext,
        program_version: u64,
        amount: &str,
        sold_at: Timestamp,
    ) -> Option<tier_retry::Pending> {
        let merchant = c.caller.merchant_id();
        if self
            .needs
            .without_progression(merchant, program_version)
            .await
        {
            return None;
        }
        Some(tier_retry::Pending {
            request: rules_pb::DecideTierRequest {
                merchant_id: merchant.to_owned(),
                program: None,
                customer: Some(context.clone()),
                trigger: rules_pb::TierTrigger::Purchase as i32,
                purchase_amount: amount.to_owned(),
                decided_at: Some(sold_at),
            },
            error: String::new(),
        })
    }

    async fn balance(
        &self,
        c: &Composer<'_>,
        customer_id: &str,
    ) -> Result<Option<ledger_pb::Balance>> {
        Ok(dep_call!(
            self.gw,
            LEDGER,
            c.deadline,
            Retry::Idempotent,
            ledger.get_balance(ledger_pb::GetBalanceRequest {
                merchant_id: c.caller.merchant_id().to_owned(),
                customer_id: customer_id.to_owned(),
                ..Default::default()
            })
        )?
        .balance)
    }

    async fn cancel_inner(&self, request: Request<CancelRequest>) -> Result<CancelResponse> {
        let deadline = Deadline::of(&request);
        let caller = self.gw.auth.terminal_or_admin(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::default();
        v.id("request_id", &req.request_id, MAX_ID, true);
        v.id("receipt_id", &req.receipt_id, MAX_ID, true);
        v.text("reason", &req.reason, MAX_TEXT, false);
        v.id("terminal_id", &req.terminal_id, MAX_ID, false);
        v.check()?;
        let terminal = self.gw.auth.terminal_for(&caller, &req.terminal_id).await?;
        let merchant = caller.merchant_id().to_owned();
        let _guard = self.lock(&merchant, &req.receipt_id).await;
        self.gw
            .requests
            .once(&merchant, &req.request_id, "cancel", &req, || async {
                let c = self.composer(&caller, &terminal, deadline);
                for _ in 0..MAX_RACES {
                    let stored = self.checkouts.get(&merchant, &req.receipt_id).await?;
                    allowed(&req.receipt_id, stored.as_ref(), Op::Cancel)?;
                    let mut stored =
                        stored.unwrap_or_else(|| self.new_checkout(&req.receipt_id, &terminal));
                    if stored.state() != CheckoutState::Cancelled {
                        // Booked by a Confirm that has not stored its answer yet (on another
                        // replica, or before a crash): the ledger is the truth.
                        if self.ledger_receipt(&c, &req.receipt_id).await?.is_some() {
                            return Err(conflict(
                                &req.receipt_id,
                                CheckoutState::Confirmed,
                                "refund it instead",
                            ));
                        }
                    }
                    if stored.state() == CheckoutState::Reserved {
                        let key =
                            idempotency::from_caller("cancel", &req.request_id, &[&stored.hold_id]);
                        self.void_hold(&c, &key, &stored.hold_id).await?;
                        if let Some(hold) = stored.checkout.hold.as_mut() {
                            hold.state = ledger_pb::HoldState::Voided as i32;
                        }
                    }
                    let balance = if stored.checkout.customer_id.is_empty() {
                        None
                    } else {
                        self.balance(&c, &stored.checkout.customer_id).await?
                    };
                    stored.checkout.state = CheckoutState::Cancelled as i32;
                    stored.checkout.updated_at = Some(now_proto());
                    if self.checkouts.put(&merchant, &stored).await?.is_ok() {
                        return Ok(CancelResponse {
                            checkout: Some(stored.checkout),
                            balance,
                        });
                    }
                }
                Err(lost_race(&req.receipt_id))
            })
            .await
    }

    async fn refund_inner(&self, request: Request<RefundRequest>) -> Result<RefundResponse> {
        let deadline = Deadline::of(&request);
        let caller = self.gw.auth.terminal_or_admin(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::default();
        v.id("request_id", &req.request_id, MAX_ID, true);
        v.id("receipt_id", &req.receipt_id, MAX_ID, true);
        v.id("refund_id", &req.refund_id, MAX_ID, true);
        if req.lines.len() > validate::MAX_LINES {
            v.add("lines", format!("at most {} lines", validate::MAX_LINES));
        }
        for (i, line) in req.lines.iter().enumerate() {
            v.id(
                &format!("lines[{i}].line_id"),
                &line.line_id,
                validate::MAX_LINE_ID,
                true,
            );
            if !line.quantity.is_empty() {
                if let Err(why) = kopilka_runtime::decimal::parse(
                    &line.quantity,
                    validate::QUANTITY_SCALE,
                    kopilka_runtime::decimal::Sign::Positive,
                ) {
                    v.add(format!("lines[{i}].quantity"), why);
                }
            }
        }
        v.not_future(
            "occurred_at",
            req.occurred_at.as_ref(),
            Utc::now(),
            validate::MAX_CLOCK_SKEW,
        );
        v.text("reason", &req.reason, MAX_TEXT, false);
        v.id("terminal_id", &req.terminal_id, MAX_ID, false);
        v.check()?;
        // Any terminal of the merchant may take a return; the key must still be good for it.
        let terminal = self.gw.auth.terminal_for(&caller, &req.terminal_id).await?;
        let merchant = caller.merchant_id().to_owned();
        let _guard = self.lock(&merchant, &req.receipt_id).await;
        self.gw
            .requests
            .once(&merchant, &req.request_id, "refund", &req, || async {
                let stored = self.checkouts.get(&merchant, &req.receipt_id).await?;
                let Some(mut stored) = stored else {
                    return Err(not_found(&req.receipt_id));
                };
                allowed(&req.receipt_id, Some(&stored), Op::Refund { full: false })?;
                let refunded = dep_call!(
                    self.gw,
                    LEDGER,
                    deadline,
                    Retry::Idempotent,
                    ledger.refund_receipt(ledger_pb::RefundReceiptRequest {
                        merchant_id: merchant.clone(),
                        request_id: idempotency::derived(
                            "refund",
                            &[&req.receipt_id, &req.refund_id]
                        ),
                        receipt_id: req.receipt_id.clone(),
                        refund_id: req.refund_id.clone(),
                        lines: req
                            .lines
                            .iter()
                            .map(|l| ledger_pb::RefundLineRequest {
                                line_id: l.line_id.clone(),
                                quantity: l.quantity.clone(),
                            })
                            .collect(),
                        policy: 0,
                        occurred_at: req.occurred_at,
                        reason: req.reason.clone(),
                    })
                )?;
                let c = self.composer(&caller, &terminal, deadline);
                let mut receipt = refunded.receipt.unwrap_or_default();
                let mut races = 0;
                // A concurrent refund on another replica may store its receipt between this
                // read and write: then the ledger's latest receipt is stored, never an older one.
                loop {
                    let full = receipt.refund_state() == ledger_pb::RefundState::Full;
                    stored.checkout.state =
                        allowed(&req.receipt_id, Some(&stored), Op::Refund { full })? as i32;
                    stored.checkout.receipt = Some(receipt.clone());
                    stored.checkout.updated_at = Some(now_proto());
                    if self.checkouts.put(&merchant, &stored).await?.is_ok() {
                        break;
                    }
                    races += 1;
                    if races >= MAX_RACES {
                        return Err(lost_race(&req.receipt_id));
                    }
                    stored = self
                        .checkouts
                        .get(&merchant, &req.receipt_id)
                        .await?
                        .ok_or_else(|| not_found(&req.receipt_id))?;
                    receipt = self
                        .ledger_receipt(&c, &req.receipt_id)
                        .await?
                        .ok_or_else(|| not_found(&req.receipt_id))?;
                }
                let refund = refunded.refund.unwrap_or_default();
                let currency = stored
                    .checkout
                    .calculation
                    .as_ref()
                    .map(|c| c.currency.clone())
                    .unwrap_or_else(|| caller.merchant.currency.clone());
                Ok(RefundResponse {
                    print_lines: present::refund_lines(
                        &refund,
                        &currency,
                        refunded.balance.as_ref(),
                    ),
                    refund: Some(refund),
                    checkout: Some(stored.checkout),
                    balance: refunded.balance,
                })
            })
            .await
    }

    async fn get_checkout_inner(
        &self,
        request: Request<GetCheckoutRequest>,
    ) -> Result<GetCheckoutResponse> {
        let caller = self.gw.auth.terminal_or_admin(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::default();
        v.id("receipt_id", &req.receipt_id, MAX_ID, true);
        v.check()?;
        let stored = self
            .checkouts
            .get(caller.merchant_id(), &req.receipt_id)
            .await?
            .ok_or_else(|| not_found(&req.receipt_id))?;
        Ok(GetCheckoutResponse {
            checkout: Some(stored.checkout),
        })
    }

    async fn offline_inner(
        &self,
        request: Request<SubmitOfflineReceiptRequest>,
    ) -> Result<SubmitOfflineReceiptResponse> {
        let deadline = Deadline::of(&request);
        let caller = self.gw.auth.terminal_or_admin(&request).await?;
        let req = request.into_inner();
        let now = Utc::now();
        let mut v = Violations::default();
        v.id("request_id", &req.request_id, MAX_ID, true);
        v.id("receipt_id", &req.receipt_id, MAX_ID, true);
        validate::buyer(&mut v, "buyer", req.buyer.as_ref(), false);
        validate::lines(&mut v, "lines", &req.lines, &caller.merchant.currency);
        validate::promo_codes(&mut v, "promo_codes", &req.promo_codes);
        match &req.occurred_at {
            None => v.add("occurred_at", "required: the original sale time"),
            Some(at) => {
                v.not_future("occurred_at", Some(at), now, validate::MAX_CLOCK_SKEW);
            }
        }
        v.id("terminal_id", &req.terminal_id, MAX_ID, false);
        v.text("fiscal_ref", &req.fiscal_ref, MAX_ID, false);
        details(
            &mut v,
            "register_if_unknown",
            req.register_if_unknown.as_ref(),
        );
        v.check()?;
        let sold_at = req
            .occurred_at
            .as_ref()
            .and_then(timestamps::from_proto)
            .unwrap_or(now);
        if now - sold_at > OFFLINE_MAX_AGE {
            return Err(status::Refusal::precondition(
                "RECEIPT_TOO_OLD",
                "offline receipts older than 30 days are not accepted",
            )
            .with("max_age", "PT720H")
            .into());
        }
        let terminal = self.gw.auth.terminal_for(&caller, &req.terminal_id).await?;
        let content = SubmitOfflineReceiptRequest {
            buyer: req.buyer.clone(),
            lines: req.lines.clone(),
            promo_codes: req.promo_codes.clone(),
            occurred_at: req.occurred_at,
            ..Default::default()
        };
        let merchant = caller.merchant_id().to_owned();
        let _guard = self.lock(&merchant, &req.receipt_id).await;
        let request_hash = digest(&req);
        if let Some(answer) = self
            .gw
            .requests
            .find(&merchant, &req.request_id, "offline", &request_hash)
            .await?
        {
            return Ok(answer);
        }
        let booked = self
            .book(
                &caller,
                &terminal,
                deadline,
                Booking {
                    request_id: &req.request_id,
                    receipt_id: &req.receipt_id,
                    buyer: req.buyer.as_ref(),
                    lines: &req.lines,
                    promo_codes: &req.promo_codes,
                    redeem_points: "",
                    occurred_at: req.occurred_at,
                    fiscal_ref: &req.fiscal_ref,
                    register: req.register_if_unknown.as_ref(),
                    offline: true,
                    content_hash: digest(&content),
                    request_hash,
                },
            )
            .await?;
        Ok(SubmitOfflineReceiptResponse {
            checkout: booked.checkout,
            balance: booked.balance,
        })
    }
}

fn customer_id_of(ev: &Evaluated) -> String {
    ev.buyer
        .as_ref()
        .map(|k| k.customer.customer_id.clone())
        .unwrap_or_default()
}

/// The booked lines: the register's line with what loyalty did to it.
fn receipt_lines(
    lines: &[BasketLine],
    results: &[rules_pb::LineResult],
) -> Vec<ledger_pb::ReceiptLine> {
    lines
        .iter()
        .zip(results)
        .map(|(line, r)| ledger_pb::ReceiptLine {
            line: Some(line.clone()),
            gross_amount: String::new(),
            discount: r.discount.clone(),
            redeem_points: r.redeem_points.clone(),
            redeem_money: r.redeem_money.clone(),
            accrual_points: r.accrual_points.clone(),
            rule_ids: r
                .contributions
                .iter()
                .map(|c| c.rule_id.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            refunded_quantity: String::new(),
        })
        .collect()
}

/// Checks registration details given with a checkout.
fn details(v: &mut Violations, field: &str, details: Option<&CustomerDetails>) {
    let Some(d) = details else { return };
    v.text(&format!("{field}.first_name"), &d.first_name, 100, false);
    v.text(&format!("{field}.last_name"), &d.last_name, 100, false);
    v.text(&format!("{field}.middle_name"), &d.middle_name, 100, false);
    v.text(&format!("{field}.email"), &d.email, 254, false);
    v.enumeration::<kopilka_proto::types::Gender>(&format!("{field}.gender"), d.gender);
}

/// The cashier's view of a buyer.
fn summary(known: &Known, caller: &Caller) -> CustomerSummary {
    crate::customers::summary(
        &known.customer,
        known.tier.as_ref(),
        known.matched.as_ref(),
        known.input_kind,
        known.registered_now,
        caller.terminal.is_some(),
    )
}

#[tonic::async_trait]
impl CheckoutService for CheckoutApi {
    async fn calculate(
        &self,
        request: Request<CalculateRequest>,
    ) -> Result<Response<CalculateResponse>, Status> {
        Ok(Response::new(self.calculate_inner(request).await?))
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        Ok(Response::new(self.reserve_inner(request).await?))
    }

    async fn confirm(
        &self,
        request: Request<ConfirmRequest>,
    ) -> Result<Response<ConfirmResponse>, Status> {
        Ok(Response::new(self.confirm_inner(request).await?))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        Ok(Response::new(self.cancel_inner(request).await?))
    }

    async fn refund(
        &self,
        request: Request<RefundRequest>,
    ) -> Result<Response<RefundResponse>, Status> {
        Ok(Response::new(self.refund_inner(request).await?))
    }

    async fn get_checkout(
        &self,
        request: Request<GetCheckoutRequest>,
    ) -> Result<Response<GetCheckoutResponse>, Status> {
        Ok(Response::new(self.get_checkout_inner(request).await?))
    }

    async fn submit_offline_receipt(
        &self,
        request: Request<SubmitOfflineReceiptRequest>,
    ) -> Result<Response<SubmitOfflineReceiptResponse>, Status> {
        Ok(Response::new(self.offline_inner(request).await?))
    }
}
