//! One evaluation of a receipt, composed from the three services: who is buying (cards-svc),
//! what they have (ledger-svc) and what the program gives (rules-svc). Fetches only what the
//! program version needs (its `EvaluationNeeds`), and never answers with a partial picture: a
//! dependency that cannot answer fails the call with DEPENDENCY_UNAVAILABLE.

use std::sync::Arc;
use std::time::Duration;

use kopilka_proto::cards as cards_pb;
use kopilka_proto::gateway::buyer::Who;
use kopilka_proto::gateway::Buyer;
use kopilka_proto::ledger::{Balance, GetAccountSnapshotRequest, GetAccountSnapshotResponse};
use kopilka_proto::rules::{
    CustomerContext, CustomerTier, EvaluateRequest, EvaluationInput, EvaluationNeeds,
    EvaluationResult, ExplainLevel, GetActiveVersionRequest,
};
use kopilka_proto::types::{BasketLine, Identifier, PurchaseAggregates};
use kopilka_proto::wkt::Timestamp;
use kopilka_runtime::timestamps;
use moka::future::Cache;

use crate::auth::{Caller, TerminalRef};
use crate::deps::{Deadline, Retry, CARDS, LEDGER, RULES};
use crate::error::Result;
use crate::{dep_call, Gateway};

/// A buyer as cards-svc knows them.
#[derive(Debug, Clone)]
pub struct Known {
    pub customer: cards_pb::Customer,
    pub tier: Option<cards_pb::Tier>,
    pub matched: Option<Identifier>,
    pub input_kind: i32,
    pub referrers: Vec<String>,
    pub registered_now: bool,
}

/// What one evaluation saw and answered.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub result: EvaluationResult,
    pub buyer: Option<Known>,
    /// The buyer's balance before the receipt.
    pub balance: Option<Balance>,
    /// The buyer's purchase aggregates before the receipt (for the tier decision).
    pub aggregates: Option<PurchaseAggregates>,
    pub context: Option<CustomerContext>,
}

/// The receipt part of an evaluation.
pub struct Receipt<'a> {
    pub lines: &'a [BasketLine],
    pub promo_codes: &'a [String],
    pub redeem_points: &'a str,
    pub occurred_at: Option<Timestamp>,
    pub explain: i32,
    /// Points held for this receipt, spendable by it on top of the available ones.
    pub held_points: Option<&'a str>,
}

/// Per-merchant evaluation needs by active version, and the versions without tier
/// progression (after a purchase there is nothing to decide for them).
#[derive(Clone)]
pub struct NeedsCache(
    Cache<String, Arc<(u64, EvaluationNeeds)>>,
    Cache<(String, u64), ()>,
);

impl Default for NeedsCache {
    fn default() -> Self {
        Self(
            Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            // Published versions are immutable: what a version is stays true.
            Cache::builder().max_capacity(10_000).build(),
        )
    }
}

impl NeedsCache {
    /// Whether `version` is known to have no tier progression.
    pub async fn without_progression(&self, merchant_id: &str, version: u64) -> bool {
        self.1.contains_key(&(merchant_id.to_owned(), version))
    }

    /// Remembers that `version` has no tier progression.
    pub async fn no_progression(&self, merchant_id: &str, version: u64) {
        self.1.insert((merchant_id.to_owned(), version), ()).await;
    }
}

/// Composes evaluations for one call.
pub struct Composer<'a> {
    pub gw: &'a Gateway,
    pub caller: &'a Caller,
    pub terminal: &'a TerminalRef,
    pub deadline: Deadline,
    pub needs: &'a NeedsCache,
}

impl Composer<'_> {
    fn merchant(&self) -> String {
        self.caller.merchant_id().to_owned()
    }

    /// The needs of the version active now (cached), or at a past time (offline receipts).
    async fn needs(
        &self,
        at: Option<&Timestamp>,
        fresh: bool,
    ) -> Result<Arc<(u64, EvaluationNeeds)>> {
        let fetch = || async {
            let answer = dep_call!(
                self.gw,
                RULES,
                self.deadline,
                Retry::Idempotent,
                programs.get_active_version(GetActiveVersionRequest {
                    merchant_id: self.merchant(),
                    at: at.cloned(),
                    include_program: false,
                })
            );
            match answer {
                Ok(answer) => {
                    let version = answer.version.unwrap_or_default();
                    Ok(Arc::new((
                        version.version,
                        version.needs.unwrap_or_default(),
                    )))
                }
                // No program: nothing to fetch; Evaluate answers NO_ACTIVE_PROGRAM itself.
                Err(e) if e.reason().as_deref() == Some("NO_ACTIVE_PROGRAM") => {
                    Ok(Arc::new((0, EvaluationNeeds::default())))
                }
                Err(e) => Err(e),
            }
        };
        if at.is_some() {
            return fetch().await;
        }
        let key = self.merchant();
        if fresh {
            self.needs.0.invalidate(&key).await;
        }
        if let Some(hit) = self.needs.0.get(&key).await {
            return Ok(hit);
        }
        let needs = fetch().await?;
        self.needs.0.insert(key, needs.clone()).await;
        Ok(needs)
    }

    /// Who is buying: `None` for an anonymous receipt; NOT_FOUND CARD_NOT_FOUND and the other
    /// identification errors of cards-svc pass through.
    pub async fn identify(
        &self,
        buyer: Option<&Buyer>,
        referral_levels: u32,
    ) -> Result<Option<Known>> {
        match buyer.and_then(|b| b.who.as_ref()) {
            None => Ok(None),
            Some(Who::Identifier(input)) => {
                let found = dep_call!(
                    self.gw,
                    CARDS,
                    self.deadline,
                    Retry::Idempotent,
                    identifiers.lookup_customer(cards_pb::LookupCustomerRequest {
                        merchant_id: self.merchant(),
                        input: Some(input.clone()),
                        include_referral_chain: referral_levels > 0,
                    })
                )
                .map_err(|e| e.for_caller(&[("input", "buyer.identifier")]))?;
                Ok(Some(Known {
                    customer: found.customer.unwrap_or_default(),
                    tier: found.tier,
                    matched: found.matched,
                    input_kind: found.input_kind,
                    referrers: found.referrer_chain_customer_ids,
                    registered_now: false,
                }))
            }
            Some(Who::CustomerId(id)) => self.by_id(id, referral_levels).await.map(Some),
        }
    }

    /// A customer by id, with their tier and (if needed) referrers.
    pub async fn by_id(&self, customer_id: &str, referral_levels: u32) -> Result<Known> {
        let customer = dep_call!(
            self.gw,
            CARDS,
            self.deadline,
            Retry::Idempotent,
            customers.get_customer(cards_pb::GetCustomerRequest {
                merchant_id: self.merchant(),
                customer_id: customer_id.to_owned(),
            })
        );
        let tier = dep_call!(
            self.gw,
            CARDS,
            self.deadline,
            Retry::Idempotent,
            tiers.get_customer_tier(cards_pb::GetCustomerTierRequest {
                merchant_id: self.merchant(),
                customer_id: customer_id.to_owned(),
            })
        );
        let customer = customer?.customer.unwrap_or_default();
        let tier = tier?.tier;
        let referrers = if referral_levels > 0 {
            dep_call!(
                self.gw,
                CARDS,
                self.deadline,
                Retry::Idempotent,
                referrals.get_referral_chain(cards_pb::GetReferralChainRequest {
                    merchant_id: self.merchant(),
                    customer_id: customer_id.to_owned(),
                    max_levels: referral_levels,
                })
            )?
            .referrers
            .into_iter()
            .map(|link| link.customer_id)
            .collect()
        } else {
            Vec::new()
        };
        Ok(Known {
            customer,
            tier,
            matched: None,
            input_kind: 0,
            referrers,
            registered_now: false,
        })
    }

    /// Evaluates the receipt for `buyer` (already identified, or anonymous).
    pub async fn evaluate(&self, buyer: Option<Known>, receipt: Receipt<'_>) -> Result<Evaluated> {
        let mut needs = self.needs(receipt.occurred_at.as_ref(), false).await?;
        let mut fresh = false;
        loop {
            let (balance, aggregates) = match &buyer {
                Some(known) => {
                    let snapshot = self.snapshot(known, &needs.1, receipt.occurred_at).await?;
                    (snapshot.balance, snapshot.aggregates)
                }
                None => (None, None),
            };
            let context = buyer.as_ref().map(|known| {
                context(
                    known,
                    balance.as_ref(),
                    aggregates.clone(),
                    receipt.held_points,
                )
            });
            let answer = dep_call!(
                self.gw,
                RULES,
                self.deadline,
                Retry::Idempotent,
                evaluation.evaluate(EvaluateRequest {
                    merchant_id: self.merchant(),
                    program: None,
                    input: Some(EvaluationInput {
                        lines: receipt.lines.to_vec(),
                        customer: context.clone(),
                        promo_codes: receipt.promo_codes.to_vec(),
                        occurred_at: receipt.occurred_at,
                        time_zone: self.terminal.time_zone.clone(),
                        store_id: self.terminal.store_id.clone(),
                        terminal_id: self.terminal.terminal_id.clone(),
                        redeem_points: receipt.redeem_points.to_owned(),
                        explain: if receipt.explain == 0 {
                            ExplainLevel::Applied as i32
                        } else {
                            receipt.explain
                        },
                    }),
                })
            )
            .map_err(|e| e.for_caller(RULES_INPUT))?;
            let result = answer.result.unwrap_or_default();
            // A version published since the needs were cached may read other windows.
            if receipt.occurred_at.is_none() && result.program_version != needs.0 && !fresh {
                fresh = true;
                needs = self.needs(None, true).await?;
                if buyer.is_some() {
                    continue;
                }
            }
            return Ok(Evaluated {
                result,
                buyer,
                balance,
                aggregates,
                context,
            });
        }
    }

    /// The context a tier decision for `known`'s purchase at `sold_at` reads: their purchases
    /// up to just before it (a recovered Confirm has no evaluation of its own to take it from).
    pub async fn context_before(
        &self,
        known: &Known,
        sold_at: Timestamp,
    ) -> Result<CustomerContext> {
        let needs = self.needs(Some(&sold_at), false).await?;
        let before = timestamps::from_proto(&sold_at)
            .map(|at| timestamps::to_proto(at - chrono::Duration::microseconds(1)));
        let snapshot = self.snapshot(known, &needs.1, before).await?;
        Ok(context(
            known,
            snapshot.balance.as_ref(),
            snapshot.aggregates,
            None,
        ))
    }

    /// `known`'s balance and the purchase aggregates `needs` reads, as of `as_of` (now: `None`).
    async fn snapshot(
        &self,
        known: &Known,
        needs: &EvaluationNeeds,
        as_of: Option<Timestamp>,
    ) -> Result<GetAccountSnapshotResponse> {
        dep_call!(
            self.gw,
            LEDGER,
            self.deadline,
            Retry::Idempotent,
            ledger.get_account_snapshot(GetAccountSnapshotRequest {
                merchant_id: self.merchant(),
                customer_id: known.customer.customer_id.clone(),
                lookbacks: needs.lookbacks.clone(),
                as_of,
                expiring_within: None,
            })
        )
    }

    /// The referral depth the active program reads (to fetch referrers with the buyer).
    pub async fn referral_levels(&self, at: Option<&Timestamp>) -> Result<u32> {
        Ok(self.needs(at, false).await?.1.referral_levels)
    }
}

/// The customer context rules read, from cards-svc's and ledger-svc's answers.
pub fn context(
    known: &Known,
    balance: Option<&Balance>,
    aggregates: Option<PurchaseAggregates>,
    held_points: Option<&str>,
) -> CustomerContext {
    let customer = &known.customer;
    let profile = customer.profile.clone().unwrap_or_default();
    let available = balance.map(|b| b.available.clone()).unwrap_or_default();
    let available = match held_points {
        Some(held) => add_decimal_strings(&available, held),
        None => available,
    };
    CustomerContext {
        customer_id: customer.customer_id.clone(),
        tier: known.tier.as_ref().map(|t| CustomerTier {
            code: t.code.clone(),
            rank: t.rank,
            accrual_percent: t.accrual_percent.clone(),
            discount_percent: t.discount_percent.clone(),
            max_redeem_share_percent: t.max_redeem_share_percent.clone(),
        }),
        tier_locked: customer.tier.as_ref().is_some_and(|a| a.locked),
        birth_date: profile.birth_date,
        registered_at: customer.registered_at,
        aggregates,
        stamps: balance.map(|b| b.stamps.clone()).unwrap_or_default(),
        identifiers: Vec::new(),
        referrer_customer_ids: known.referrers.clone(),
        available_points: available,
    }
}

fn add_decimal_strings(a: &str, b: &str) -> String {
    use rust_decimal::Decimal;
    let parse = |s: &str| s.parse::<Decimal>().unwrap_or_default();
    (parse(a) + parse(b)).normalize().to_string()
}

/// The fields of an evaluation input that are the caller's own, by their names in the
/// caller's request (rules-svc names them from its own: "input.lines[2].quantity"); the gateway
/// fills the rest.
const RULES_INPUT: &[(&str, &str)] = &[
    ("input.lines", "lines"),
    ("input.promo_codes", "promo_codes"),
    ("input.redeem_points", "redeem_points"),
    ("input.occurred_at", "occurred_at"),
];
