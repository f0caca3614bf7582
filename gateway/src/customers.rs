//! CustomerService (`kopilka.gateway.v1`): registration and lookup at the register, balances,
//! history, cards, consents and actions, and the admin calls on customers, each forwarded to
//! cards-svc or ledger-svc with the caller's merchant (another merchant's customer is NOT_FOUND,
//! as cards-svc scopes every read by merchant).
//!
//! [`register`] is the one registration path: RegisterCustomer and the checkout's "register an
//! unknown phone at the register" (C6) both call it. It creates the customer in cards-svc (a
//! phone that is already registered gives that customer back, `registered_now = false`) and
//! grants the start bonus once (R14): rules-svc EvaluateAction(REGISTRATION) decides the points,
//! ledger-svc GrantGift books them under the rule's `grant_key`, so a retry never grants twice,
//! and referrers' rewards ride along as beneficiary grants (C7). [`summary`] is the cashier's
//! view of a customer; full phones and e-mails never reach terminal keys.
//!
//! Served by this version: RegisterCustomer, LookupCustomer, GetCustomer, SetConsent, GetBalance,
//! ListHistory, ListPurchases, RecordAction, AttachCard, BlockCard, ReplaceCard, ListCustomers,
//! MergeCustomers, AssignTier, GetTierHistory, AdjustPoints, GrantGift, ListReferrals.
//!
//! UNIMPLEMENTED here: UpdateCustomer (terminal keys may fill empty fields only, which needs a
//! read-then-write the cards API does not offer atomically) and the registration links
//! (CreateRegistrationLink, ListRegistrationLinks, RevokeRegistrationLink), whose cards-svc
//! RegistrationService the gateway holds no client for yet.

use std::str::FromStr;

use chrono::Utc;
use kopilka_proto::cards::{self, Customer, Tier};
use kopilka_proto::gateway::customer_service_server::CustomerService;
use kopilka_proto::gateway::{self as pb, CustomerDetails, CustomerSummary, PointsAward};
use kopilka_proto::ledger::{self, Balance};
use kopilka_proto::rules;
use kopilka_proto::types::{self, ActionKind, IdentifierInput, IdentifierKind};
use kopilka_proto::wkt;
use kopilka_runtime::status::{self, Refusal};
use kopilka_runtime::{redact, timestamps};
use rust_decimal::Decimal;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

use crate::auth::{self, Caller, TerminalRef};
use crate::checkout::validate::Violations;
use crate::deps::{self, Deadline, Retry};
use crate::error::{Error, Result};
use crate::keys::KeyScope;
use crate::requests::{check_request_id, MAX_REQUEST_ID};
use crate::{dep_call, Gateway};

/// At most this many cards in one registration.
pub const MAX_CARDS: usize = 5;
/// Balances report points expiring within this many days.
const EXPIRING_WITHIN_DAYS: i64 = 30;

/// The outcome of [`register`].
#[derive(Debug, Clone)]
pub struct Registered {
    /// The customer, new or the one the phone already belonged to.
    pub customer: Customer,
    /// The customer's tier definition (with perks), if any.
    pub tier: Option<Tier>,
    /// Referrers above the customer, level 1 first.
    pub referrer_chain: Vec<String>,
    /// True if this call (or an earlier attempt with the same request id) created the customer.
    pub registered_now: bool,
    /// The start bonus granted for the registration ("0" points if none or not new).
    pub start_bonus: PointsAward,
    /// The balance after the bonus.
    pub balance: Option<Balance>,
}

/// The downstream key of step `scope` of the caller's call (`parts[0]` is its request id): see
/// [`crate::idempotency`].
pub fn derived_id(scope: &str, parts: &[&str]) -> String {
    let (request_id, rest) = parts.split_first().map_or(("", &[][..]), |(f, r)| (*f, r));
    crate::idempotency::from_caller(scope, request_id, rest)
}

/// Registers a customer (C6) or finds the one `phone` already belongs to, and grants the start
/// bonus once (R14). `terminal` is the register it happens at; `None` means the ADMIN channel.
/// `request_id` is the caller's: cards-svc and ledger-svc get ids derived from it.
#[allow(clippy::too_many_arguments)]
pub async fn register(
    gw: &Gateway,
    caller: &Caller,
    terminal: Option<&TerminalRef>,
    deadline: Deadline,
    request_id: &str,
    phone: &str,
    cards: &[IdentifierInput],
    details: Option<&CustomerDetails>,
    external_id: &str,
) -> Result<Registered> {
    let merchant = caller.merchant_id();
    let d = details.cloned().unwrap_or_default();
    let registration = match terminal {
        Some(t) => cards::RegistrationSource {
            channel: cards::RegistrationChannel::Register as i32,
            store_id: t.store_id.clone(),
            terminal_id: t.terminal_id.clone(),
            ..Default::default()
        },
        None => cards::RegistrationSource {
            channel: cards::RegistrationChannel::Admin as i32,
            ..Default::default()
        },
    };
    let create = cards::CreateCustomerRequest {
        merchant_id: merchant.to_owned(),
        request_id: derived_id("register", &[request_id]),
        profile: Some(cards::CustomerProfile {
            first_name: d.first_name.clone(),
            last_name: d.last_name.clone(),
            middle_name: d.middle_name.clone(),
            phone: phone.to_owned(),
            email: d.email.clone(),
            birth_date: d.birth_date,
            gender: d.gender,
            locale: d.locale.clone(),
            attributes: Default::default(),
        }),
        identifiers: cards.to_vec(),
        referrer: d.referrer.clone().filter(|r| !r.raw.is_empty()),
        consents: d.consents.clone(),
        registration: Some(registration),
        registered_at: None,
        external_id: external_id.to_owned(),
    };
    let created = dep_call!(
        gw,
        deps::CARDS,
        deadline,
        Retry::Idempotent,
        customers.create_customer(create)
    )
    .map_err(|e| e.for_caller(REGISTER_FIELDS));
    match created {
        Ok(created) => {
            let customer = created.customer.unwrap_or_default();
            let tier = tier_of(gw, merchant, deadline, &customer).await?;
            let chain = created.referrer_chain_customer_ids;
            let (start_bonus, balance) =
                start_bonus(gw, merchant, deadline, &customer, &chain).await?;
            let balance = match balance {
                Some(b) => Some(b),
                None => Some(balance_of(gw, merchant, deadline, &customer.customer_id).await?),
            };
            Ok(Registered {
                customer,
                tier,
                referrer_chain: chain,
                registered_now: true,
                start_bonus,
                balance,
            })
        }
        Err(Error::Downstream(taken)) if is_taken(&taken) && !phone.is_empty() => {
            existing(gw, caller, deadline, request_id, phone, cards, taken).await
        }
        Err(e) => Err(e),
    }
}

fn is_taken(s: &Status) -> bool {
    s.code() == Code::AlreadyExists && status::reason_of(s).as_deref() == Some("IDENTIFIER_TAKEN")
}

/// The owner named by an IDENTIFIER_TAKEN status.
fn owner_of(s: &Status) -> Option<String> {
    s.get_details_error_info()
        .and_then(|info| info.metadata.get("customer_id").cloned())
}

/// IDENTIFIER_TAKEN for the card `what` (read as `kind`, a `kopilka.type.v1.IdentifierKind`).
fn taken(owner: &str, what: &str, kind: i32) -> Error {
    let kind = IdentifierKind::try_from(kind).unwrap_or(IdentifierKind::Unspecified);
    Refusal::new(
        Code::AlreadyExists,
        "IDENTIFIER_TAKEN",
        format!("{what} belongs to another customer"),
    )
    .with("kind", kind.as_str_name())
    .with("customer_id", owner)
    .into()
}

/// The phone is registered already: that customer, with the given cards attached when free
/// (a card of someone else is IDENTIFIER_TAKEN). No start bonus.
async fn existing(
    gw: &Gateway,
    caller: &Caller,
    deadline: Deadline,
    request_id: &str,
    phone: &str,
    cards: &[IdentifierInput],
    taken_status: Status,
) -> Result<Registered> {
    let merchant = caller.merchant_id();
    let by_phone = lookup(
        gw,
        merchant,
        deadline,
        IdentifierInput {
            raw: phone.to_owned(),
            kind_hint: IdentifierKind::Phone as i32,
        },
        true,
        "phone",
    )
    .await;
    let found = match by_phone {
        Ok(found) => found,
        // The phone is free: it was a card that is taken.
        Err(Error::Downstream(s)) if s.code() == Code::NotFound => {
            return Err(Error::Downstream(taken_status))
        }
        Err(e) => return Err(e),
    };
    let customer = found.customer.clone().unwrap_or_default();
    if owner_of(&taken_status).is_some_and(|o| o != customer.customer_id) {
        return Err(Error::Downstream(taken_status));
    }
    for (i, card) in cards.iter().enumerate() {
        match lookup(
            gw,
            merchant,
            deadline,
            card.clone(),
            false,
            &format!("cards[{i}]"),
        )
        .await
        {
            Ok(owner) => {
                let owner_id = owner.customer.map(|c| c.customer_id).unwrap_or_default();
                if owner_id != customer.customer_id {
                    let kind = owner.matched.map_or(owner.input_kind, |m| m.kind);
                    return Err(taken(&owner_id, &format!("cards[{i}]"), kind));
                }
            }
            Err(Error::Downstream(s))
                if s.code() == Code::NotFound
                    && status::reason_of(&s).as_deref() == Some("CARD_NOT_FOUND") =>
            {
                let add = cards::AddIdentifierRequest {
                    merchant_id: merchant.to_owned(),
                    request_id: derived_id("register-card", &[request_id, &i.to_string()]),
                    customer_id: customer.customer_id.clone(),
                    input: Some(card.clone()),
                    first_card_only: false,
                };
                dep_call!(
                    gw,
                    deps::CARDS,
                    deadline,
                    Retry::Idempotent,
                    identifiers.add_identifier(add)
                )?;
            }
            Err(e) => return Err(e),
        }
    }
    let balance = balance_of(gw, merchant, deadline, &customer.customer_id).await?;
    Ok(Registered {
        customer,
        tier: found.tier,
        referrer_chain: found.referrer_chain_customer_ids,
        registered_now: false,
        start_bonus: zero_award(),
        balance: Some(balance),
    })
}

fn zero_award() -> PointsAward {
    PointsAward {
        points: "0".to_owned(),
        ..Default::default()
    }
}

/// cards-svc LookupCustomer for the caller's merchant.
async fn lookup(
    gw: &Gateway,
    merchant: &str,
    deadline: Deadline,
    input: IdentifierInput,
    include_referral_chain: bool,
    field: &str,
) -> Result<cards::LookupCustomerResponse> {
    let msg = cards::LookupCustomerRequest {
        merchant_id: merchant.to_owned(),
        input: Some(input),
        include_referral_chain,
    };
    dep_call!(
        gw,
        deps::CARDS,
        deadline,
        Retry::Idempotent,
        identifiers.lookup_customer(msg)
    )
    .map_err(|e| e.for_caller(&[("input", field)]))
}

/// cards-svc GetCustomer for the caller's merchant (NOT_FOUND CUSTOMER_NOT_FOUND otherwise).
async fn customer_of(
    gw: &Gateway,
    merchant: &str,
    deadline: Deadline,
    customer_id: &str,
) -> Result<Customer> {
    let msg = cards::GetCustomerRequest {
        merchant_id: merchant.to_owned(),
        customer_id: customer_id.to_owned(),
    };
    let got = dep_call!(
        gw,
        deps::CARDS,
        deadline,
        Retry::Idempotent,
        customers.get_customer(msg)
    )?;
    got.customer.ok_or_else(|| {
        Error::not_found(
            "CUSTOMER_NOT_FOUND",
            format!("customer `{customer_id}` not found"),
        )
    })
}

/// The definition of the customer's current tier (for its name and perks), if any.
async fn tier_of(
    gw: &Gateway,
    merchant: &str,
    deadline: Deadline,
    customer: &Customer,
) -> Result<Option<Tier>> {
    if customer
        .tier
        .as_ref()
        .is_none_or(|t| t.tier_code.is_empty())
    {
        return Ok(None);
    }
    let msg = cards::GetCustomerTierRequest {
        merchant_id: merchant.to_owned(),
        customer_id: customer.customer_id.clone(),
    };
    let got = dep_call!(
        gw,
        deps::CARDS,
        deadline,
        Retry::Idempotent,
        tiers.get_customer_tier(msg)
    )?;
    Ok(got.tier)
}

fn expiring_window() -> wkt::Duration {
    wkt::Duration {
        seconds: EXPIRING_WITHIN_DAYS * 86_400,
        nanos: 0,
    }
}

/// ledger-svc GetBalance (with points expiring within 30 days).
async fn balance_of(
    gw: &Gateway,
    merchant: &str,
    deadline: Deadline,
    customer_id: &str,
) -> Result<Balance> {
    let msg = ledger::GetBalanceRequest {
        merchant_id: merchant.to_owned(),
        customer_id: customer_id.to_owned(),
        expiring_within: Some(expiring_window()),
    };
    let got = dep_call!(
        gw,
        deps::LEDGER,
        deadline,
        Retry::Idempotent,
        ledger.get_balance(msg)
    )?;
    Ok(got.balance.unwrap_or_default())
}

/// The start bonus of a new customer: the program's REGISTRATION reward, at the registration
/// time, booked once by its grant key. Returns the award and the balance after (if booked).
async fn start_bonus(
    gw: &Gateway,
    merchant: &str,
    deadline: Deadline,
    customer: &Customer,
    chain: &[String],
) -> Result<(PointsAward, Option<Balance>)> {
    let context = rules::CustomerContext {
        customer_id: customer.customer_id.clone(),
        birth_date: customer.profile.as_ref().and_then(|p| p.birth_date),
        registered_at: customer.registered_at,
        referrer_customer_ids: chain.to_vec(),
        ..Default::default()
    };
    let (award, balance, _) = grant_action(
        gw,
        merchant,
        deadline,
        context,
        ActionKind::Registration,
        "",
        "",
        customer.registered_at,
        "start bonus",
    )
    .await?;
    Ok((award, balance))
}

/// Evaluates an action's reward (R14) and books it with GrantGift, once per grant key.
/// Returns the award, the balance after (when something was booked) and whether every grant
/// had been booked before. No active program means no reward.
#[allow(clippy::too_many_arguments)]
async fn grant_action(
    gw: &Gateway,
    merchant: &str,
    deadline: Deadline,
    context: rules::CustomerContext,
    action: ActionKind,
    custom_code: &str,
    action_ref: &str,
    occurred_at: Option<wkt::Timestamp>,
    description: &str,
) -> Result<(PointsAward, Option<Balance>, bool)> {
    let customer_id = context.customer_id.clone();
    let msg = rules::EvaluateActionRequest {
        merchant_id: merchant.to_owned(),
        program: None,
        customer: Some(context),
        action: action as i32,
        custom_code: custom_code.to_owned(),
        action_ref: action_ref.to_owned(),
        occurred_at,
    };
    let evaluated = match dep_call!(
        gw,
        deps::RULES,
        deadline,
        Retry::Idempotent,
        evaluation.evaluate_action(msg)
    ) {
        Ok(e) => e,
        Err(e) if e.reason().as_deref() == Some("NO_ACTIVE_PROGRAM") => {
            return Ok((zero_award(), None, false))
        }
        Err(e) => return Err(e),
    };
    let mut award = zero_award();
    let mut total = Decimal::ZERO;
    let mut balance = None;
    let mut all_before = !evaluated.grants.is_empty();
    let mut beneficiaries = evaluated.referrer_grants;
    if !beneficiaries.is_empty() && evaluated.grants.is_empty() {
        tracing::warn!(
            customer_id,
            "referrer rewards without a reward for the customer are not booked"
        );
        beneficiaries.clear();
    }
    for (i, grant) in evaluated.grants.into_iter().enumerate() {
        let points = Decimal::from_str(&grant.amount).unwrap_or_default();
        total += points;
        if i == 0 {
            award.activates_at = grant.activates_at;
            award.expires_at = grant.expires_at;
            award.rule_id = grant.rule_ids.first().cloned().unwrap_or_default();
        }
        let key = if grant.grant_key.is_empty() {
            format!("{}:{i}", action.as_str_name())
        } else {
            grant.grant_key.clone()
        };
        let msg = ledger::GrantGiftRequest {
            merchant_id: merchant.to_owned(),
            request_id: crate::idempotency::derived("gift", &[&customer_id, &key]),
            customer_id: customer_id.clone(),
            grant: Some(grant),
            action: action as i32,
            beneficiary_grants: std::mem::take(&mut beneficiaries),
            description: description.to_owned(),
            occurred_at,
        };
        let granted = dep_call!(
            gw,
            deps::LEDGER,
            deadline,
            Retry::Idempotent,
            ledger.grant_gift(msg)
        );
        match granted {
            Ok(granted) => {
                all_before &= granted.already_granted;
                balance = granted.balance;
            }
            // The key is derived from the customer and the grant's once-only key: booked before
            // with another time or description, so it is granted already.
            Err(e) if e.reason().as_deref() == Some("IDEMPOTENCY_KEY_REUSED") => balance = None,
            Err(e) => return Err(e),
        }
    }
    award.points = total.normalize().to_string();
    Ok((award, balance, all_before))
}

/// What the cashier sees about a customer: name to greet with ("Ирина С."), masked phone, tier
/// with its perks, the identifier that matched. Pure. `input_kind` is a
/// `kopilka.type.v1.IdentifierKind` value (as in cards LookupCustomerResponse.input_kind);
/// `for_terminal` masks the matched identifier's value too (terminal keys never see full phones).
pub fn summary(
    customer: &Customer,
    tier: Option<&Tier>,
    matched: Option<&types::Identifier>,
    input_kind: i32,
    registered_now: bool,
    for_terminal: bool,
) -> CustomerSummary {
    let profile = customer.profile.clone().unwrap_or_default();
    let phone_masked = if profile.phone.is_empty() {
        String::new()
    } else {
        redact::phone(&profile.phone)
    };
    let first = profile.first_name.trim();
    let last_initial = profile.last_name.trim().chars().next();
    let display_name = match (first.is_empty(), last_initial) {
        (false, Some(l)) => format!("{first} {l}."),
        (false, None) => first.to_owned(),
        (true, Some(_)) => profile.last_name.trim().to_owned(),
        (true, None) => phone_masked.clone(),
    };
    let assignment = customer.tier.as_ref();
    let (tier_code, tier_name, perks) = match (tier, assignment) {
        (Some(t), _) => (t.code.clone(), t.name.clone(), t.perks.clone()),
        (None, Some(a)) => (a.tier_code.clone(), a.tier_name.clone(), Vec::new()),
        (None, None) => (String::new(), String::new(), Vec::new()),
    };
    let matched = matched.map(|m| {
        let mut m = m.clone();
        if for_terminal || m.kind == IdentifierKind::Phone as i32 {
            m.value = m.display.clone();
        }
        m
    });
    CustomerSummary {
        customer_id: customer.customer_id.clone(),
        first_name: profile.first_name.clone(),
        display_name,
        phone_masked,
        tier_code,
        tier_name,
        perks,
        matched,
        input_kind,
        registered_at: customer.registered_at,
        registered_now,
    }
}

// ---- validation ---------------------------------------------------------------------------------

fn check_len(field: &str, value: &str, max: usize, v: &mut Violations) {
    if value.chars().count() > max {
        v.limit(field, max, "characters");
    }
}

/// A phone as typed at a register: ASCII digits with `+ ( ) - .` and spaces, 5 to 15 digits.
fn check_phone(field: &str, phone: &str, v: &mut Violations) {
    if phone.is_empty() {
        return;
    }
    if !phone.is_ascii() {
        v.add(
            field,
            "use ASCII digits 0-9 (other scripts' digits are not accepted)",
        );
        return;
    }
    if phone.len() > 32 {
        v.limit(field, 32, "characters");
        return;
    }
    if !phone
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '(' | ')' | '-' | '.' | ' '))
    {
        v.add(field, "only digits, spaces and + ( ) - . are allowed");
        return;
    }
    let digits = phone.chars().filter(char::is_ascii_digit).count();
    if !(5..=15).contains(&digits) {
        v.add(field, "must have 5 to 15 digits");
    }
}

fn check_identifier(field: &str, input: Option<&IdentifierInput>, v: &mut Violations) {
    match input {
        Some(i) if !i.raw.trim().is_empty() => check_len(&format!("{field}.raw"), &i.raw, 256, v),
        _ => v.add(format!("{field}.raw"), "required"),
    }
}

/// cards-svc's CreateCustomer fields by their names in RegisterCustomerRequest (the rest the
/// gateway fills).
const REGISTER_FIELDS: &[(&str, &str)] = &[
    ("profile.phone", "phone"),
    ("profile.first_name", "details.first_name"),
    ("profile.last_name", "details.last_name"),
    ("profile.middle_name", "details.middle_name"),
    ("profile.email", "details.email"),
    ("profile.birth_date", "details.birth_date"),
    ("profile.gender", "details.gender"),
    ("profile.locale", "details.locale"),
    ("identifiers", "cards"),
    ("referrer", "details.referrer"),
    ("consents", "details.consents"),
    ("external_id", "external_id"),
];

/// Page sizes of the customer lists: the default and the most.
const PAGE_SIZE: u32 = 50;
/// Receipts carry their lines: a smaller default page.
const RECEIPTS_PAGE_SIZE: u32 = 20;
const MAX_PAGE_SIZE: u32 = 100;

fn check_customer_id(customer_id: &str, v: &mut Violations) {
    v.id("customer_id", customer_id, MAX_REQUEST_ID, true);
}

fn done(v: Violations) -> Result<()> {
    Ok(v.check()?)
}

fn validate_register(r: &pb::RegisterCustomerRequest) -> Result<()> {
    check_request_id("request_id", &r.request_id)?;
    let mut v = Violations::new();
    check_phone("phone", &r.phone, &mut v);
    if r.phone.is_empty() && r.cards.is_empty() {
        v.add("phone", "required unless a card is given");
    }
    if r.cards.len() > MAX_CARDS {
        v.add("cards", format!("at most {MAX_CARDS}"));
    }
    for (i, c) in r.cards.iter().enumerate() {
        check_identifier(&format!("cards[{i}]"), Some(c), &mut v);
    }
    check_len("external_id", &r.external_id, 64, &mut v);
    check_len("terminal_id", &r.terminal_id, 128, &mut v);
    if let Some(d) = &r.details {
        check_len("details.first_name", &d.first_name, 100, &mut v);
        check_len("details.last_name", &d.last_name, 100, &mut v);
        check_len("details.middle_name", &d.middle_name, 100, &mut v);
        check_len("details.email", &d.email, 254, &mut v);
        check_len("details.locale", &d.locale, 35, &mut v);
        if d.consents.len() > 8 {
            v.add("details.consents", "at most 8");
        }
        if let Some(referrer) = &d.referrer {
            check_len("details.referrer.raw", &referrer.raw, 256, &mut v);
        }
    }
    done(v)
}

// ---- the service ----------------------------------------------------------------------------------

/// The tonic CustomerService.
#[derive(Clone)]
pub struct CustomerApi {
    gw: Gateway,
}

impl CustomerApi {
    pub fn new(gw: Gateway) -> Self {
        Self { gw }
    }
}

fn reply<T>(result: Result<T>) -> std::result::Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not served by this version of the gateway"
    ))
}

fn for_terminal(caller: &Caller) -> bool {
    caller.scope != KeyScope::Admin
}

/// cards-svc's refusal of a `first_card_only` attach: the customer has a card.
fn is_cards_limit(s: &Status) -> bool {
    s.get_details_error_info().is_some_and(|i| {
        i.reason == "LIMIT_EXCEEDED" && i.metadata.get("field").map(String::as_str) == Some("cards")
    })
}

/// The actions a register may record: what a cashier witnesses at the till.
const TILL_ACTIONS: &[ActionKind] = &[
    ActionKind::Survey,
    ActionKind::Review,
    ActionKind::AppInstall,
    ActionKind::Custom,
];

/// The occurrence a terminal key's action is rewarded as: one per customer, rule and day (in the
/// merchant's time zone), whatever `action_ref` the register sends, so a register cannot mint
/// points by inventing references.
fn till_action_ref(caller: &Caller) -> String {
    let tz: chrono_tz::Tz = caller.merchant.time_zone.parse().unwrap_or(chrono_tz::UTC);
    format!("till {}", Utc::now().with_timezone(&tz).date_naive())
}

/// Terminal keys see masked phones only, even in identifier records.
fn mask_record(mut record: cards::IdentifierRecord, caller: &Caller) -> cards::IdentifierRecord {
    if for_terminal(caller) {
        for id in [record.identifier.as_mut(), record.replaced_by.as_mut()]
            .into_iter()
            .flatten()
        {
            if id.kind == IdentifierKind::Phone as i32 {
                id.value = id.display.clone();
            }
        }
    }
    record
}

fn now_proto() -> wkt::Timestamp {
    timestamps::to_proto(Utc::now())
}

impl CustomerApi {
    async fn register_customer(
        &self,
        request: &Request<pb::RegisterCustomerRequest>,
    ) -> Result<pb::RegisterCustomerResponse> {
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        validate_register(r)?;
        let terminal = if caller.terminal.is_some() || !r.terminal_id.is_empty() {
            Some(gw.auth.terminal_for(&caller, &r.terminal_id).await?)
        } else {
            None
        };
        let deadline = Deadline::of(request);
        gw.requests
            .once(
                caller.merchant_id(),
                &r.request_id,
                "RegisterCustomer",
                r,
                || async {
                    let reg = register(
                        gw,
                        &caller,
                        terminal.as_ref(),
                        deadline,
                        &r.request_id,
                        &r.phone,
                        &r.cards,
                        r.details.as_ref(),
                        &r.external_id,
                    )
                    .await?;
                    Ok(pb::RegisterCustomerResponse {
                        customer: Some(summary(
                            &reg.customer,
                            reg.tier.as_ref(),
                            None,
                            0,
                            reg.registered_now,
                            for_terminal(&caller),
                        )),
                        start_bonus: Some(reg.start_bonus),
                        balance: reg.balance,
                    })
                },
            )
            .await
    }

    async fn lookup_customer(
        &self,
        request: &Request<pb::LookupCustomerRequest>,
    ) -> Result<pb::LookupCustomerResponse> {
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        let mut v = Violations::new();
        check_identifier("identifier", r.identifier.as_ref(), &mut v);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        let found = lookup(
            gw,
            merchant,
            deadline,
            r.identifier.clone().unwrap_or_default(),
            false,
            "identifier",
        )
        .await?;
        let customer = found.customer.clone().unwrap_or_default();
        let balance = balance_of(gw, merchant, deadline, &customer.customer_id).await?;
        Ok(pb::LookupCustomerResponse {
            customer: Some(summary(
                &customer,
                found.tier.as_ref(),
                found.matched.as_ref(),
                found.input_kind,
                false,
                for_terminal(&caller),
            )),
            balance: Some(balance),
        })
    }

    async fn get_customer(
        &self,
        request: &Request<pb::GetCustomerRequest>,
    ) -> Result<pb::GetCustomerResponse> {
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        let customer = customer_of(gw, merchant, deadline, &r.customer_id).await?;
        let tier = tier_of(gw, merchant, deadline, &customer).await?;
        let balance = balance_of(gw, merchant, deadline, &customer.customer_id).await?;
        let terminal = for_terminal(&caller);
        Ok(pb::GetCustomerResponse {
            customer: Some(summary(&customer, tier.as_ref(), None, 0, false, terminal)),
            profile: (!terminal).then_some(customer),
            balance: Some(balance),
        })
    }

    async fn set_consent(
        &self,
        request: &Request<pb::SetConsentRequest>,
    ) -> Result<pb::SetConsentResponse> {
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        check_request_id("request_id", &r.request_id)?;
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        if r.consent.is_none() {
            v.add("consent", "required");
        }
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        gw.requests
            .once(merchant, &r.request_id, "SetConsent", r, || async {
                let consent = r.consent.clone().unwrap_or_default();
                let msg = cards::SetConsentRequest {
                    merchant_id: merchant.to_owned(),
                    request_id: derived_id("consent", &[&r.request_id]),
                    customer_id: r.customer_id.clone(),
                    consent: Some(consent.clone()),
                };
                let set = dep_call!(
                    gw,
                    deps::CARDS,
                    deadline,
                    Retry::Idempotent,
                    customers.set_consent(msg)
                )?;
                let award = if consent.granted {
                    let channel = types::Channel::try_from(consent.channel)
                        .map(|c| c.as_str_name().to_owned())
                        .unwrap_or_default();
                    let context = rules::CustomerContext {
                        customer_id: r.customer_id.clone(),
                        ..Default::default()
                    };
                    grant_action(
                        gw,
                        merchant,
                        deadline,
                        context,
                        ActionKind::Subscription,
                        "",
                        &channel,
                        None,
                        "subscription",
                    )
                    .await?
                    .0
                } else {
                    zero_award()
                };
                Ok(pb::SetConsentResponse {
                    consents: set.consents,
                    award: Some(award),
                })
            })
            .await
    }

    /// The customer named by an identifier or an id (scoped to the merchant), with its tier.
    async fn resolve(
        &self,
        merchant: &str,
        deadline: Deadline,
        identifier: Option<&IdentifierInput>,
        customer_id: Option<&str>,
    ) -> Result<(Customer, Option<Tier>, Option<types::Identifier>, i32)> {
        let gw = &self.gw;
        match (identifier, customer_id) {
            (Some(input), _) => {
                let mut v = Violations::new();
                check_identifier("identifier", Some(input), &mut v);
                done(v)?;
                let found =
                    lookup(gw, merchant, deadline, input.clone(), false, "identifier").await?;
                Ok((
                    found.customer.unwrap_or_default(),
                    found.tier,
                    found.matched,
                    found.input_kind,
                ))
            }
            (None, Some(id)) => {
                let mut v = Violations::new();
                check_customer_id(id, &mut v);
                done(v)?;
                let customer = customer_of(gw, merchant, deadline, id).await?;
                let tier = tier_of(gw, merchant, deadline, &customer).await?;
                Ok((customer, tier, None, 0))
            }
            (None, None) => Err(Error::invalid(
                "customer",
                "required: an identifier or a customer_id",
            )),
        }
    }

    async fn get_balance(
        &self,
        request: &Request<pb::GetBalanceRequest>,
    ) -> Result<pb::GetBalanceResponse> {
        use pb::get_balance_request::Customer as Who;
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        let (identifier, id) = match &r.customer {
            Some(Who::Identifier(i)) => (Some(i), None),
            Some(Who::CustomerId(c)) => (None, Some(c.as_str())),
            None => (None, None),
        };
        let (customer, tier, matched, kind) =
            self.resolve(merchant, deadline, identifier, id).await?;
        let balance = balance_of(gw, merchant, deadline, &customer.customer_id).await?;
        Ok(pb::GetBalanceResponse {
            customer: Some(summary(
                &customer,
                tier.as_ref(),
                matched.as_ref(),
                kind,
                false,
                for_terminal(&caller),
            )),
            balance: Some(balance),
        })
    }

    async fn list_history(
        &self,
        request: &Request<pb::ListHistoryRequest>,
    ) -> Result<pb::ListHistoryResponse> {
        let gw = &self.gw;
        // Where and when a customer shopped across the chain is not a cashier's business: a
        // register shows the balance (GetBalance) and its own store's receipts (ListPurchases).
        let caller = gw.auth.admin(request).await?;
        let r = request.get_ref();
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        let page_size = v.page_size("page_size", r.page_size, PAGE_SIZE, MAX_PAGE_SIZE);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        customer_of(gw, merchant, deadline, &r.customer_id).await?;
        let msg = ledger::ListHistoryRequest {
            merchant_id: merchant.to_owned(),
            customer_id: r.customer_id.clone(),
            period: r.period,
            kinds: Vec::new(),
            include_entries: false,
            page_size: page_size as i32,
            page_token: r.page_token.clone(),
        };
        let got = dep_call!(
            gw,
            deps::LEDGER,
            deadline,
            Retry::Idempotent,
            ledger.list_history(msg)
        )?;
        Ok(pb::ListHistoryResponse {
            transactions: got.transactions,
            next_page_token: got.next_page_token,
        })
    }

    async fn list_purchases(
        &self,
        request: &Request<pb::ListPurchasesRequest>,
    ) -> Result<pb::ListPurchasesResponse> {
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        let page_size = v.page_size("page_size", r.page_size, RECEIPTS_PAGE_SIZE, MAX_PAGE_SIZE);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        customer_of(gw, merchant, deadline, &r.customer_id).await?;
        let msg = ledger::ListReceiptsRequest {
            merchant_id: merchant.to_owned(),
            customer_id: r.customer_id.clone(),
            // Terminal keys see the receipts of their own store only.
            store_id: caller
                .terminal
                .as_ref()
                .map(|t| t.store_id.clone())
                .unwrap_or_default(),
            period: r.period,
            include_lines: true,
            page_size: page_size as i32,
            page_token: r.page_token.clone(),
        };
        let got = dep_call!(
            gw,
            deps::LEDGER,
            deadline,
            Retry::Idempotent,
            ledger.list_receipts(msg)
        )?;
        Ok(pb::ListPurchasesResponse {
            receipts: got.receipts,
            next_page_token: got.next_page_token,
        })
    }

    async fn record_action(
        &self,
        request: &Request<pb::RecordActionRequest>,
    ) -> Result<pb::RecordActionResponse> {
        use pb::record_action_request::Customer as Who;
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        check_request_id("request_id", &r.request_id)?;
        let mut v = Violations::new();
        let action = ActionKind::try_from(r.action).unwrap_or(ActionKind::Unspecified);
        match action {
            ActionKind::Unspecified => v.add("action", "required"),
            ActionKind::Registration | ActionKind::Birthday | ActionKind::WinBack => v.add(
                "action",
                "REGISTRATION, BIRTHDAY and WIN_BACK are triggered by Kopilka itself",
            ),
            ActionKind::Custom if r.custom_code.is_empty() => {
                v.add("custom_code", "required for ACTION_KIND_CUSTOM")
            }
            _ => {}
        }
        check_len("custom_code", &r.custom_code, 64, &mut v);
        if r.action_ref.is_empty() || r.action_ref.chars().count() > 64 {
            v.add("action_ref", "1 to 64 characters");
        }
        if let Some(at) = &r.occurred_at {
            match timestamps::from_proto(at) {
                Some(t) if t <= Utc::now() + chrono::Duration::minutes(5) => {}
                _ => v.add(
                    "occurred_at",
                    "a valid time at most 5 minutes in the future",
                ),
            }
        }
        done(v)?;
        // What a register may record, and how often: see `till_action_ref`.
        let action_ref = if for_terminal(&caller) {
            if !TILL_ACTIONS.contains(&action) {
                return Err(auth::admin_only(
                    "a register records SURVEY, REVIEW, APP_INSTALL and CUSTOM actions only \
                     (SUBSCRIPTION comes with SetConsent; the rest are for admin keys)",
                ));
            }
            till_action_ref(&caller)
        } else {
            r.action_ref.clone()
        };
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        let (identifier, id) = match &r.customer {
            Some(Who::Identifier(i)) => (Some(i), None),
            Some(Who::CustomerId(c)) => (None, Some(c.as_str())),
            None => (None, None),
        };
        let (customer, tier, _, _) = self.resolve(merchant, deadline, identifier, id).await?;
        gw.requests
            .once(merchant, &r.request_id, "RecordAction", r, || async {
                let context = rules::CustomerContext {
                    customer_id: customer.customer_id.clone(),
                    tier: tier.as_ref().map(|t| rules::CustomerTier {
                        code: t.code.clone(),
                        rank: t.rank,
                        accrual_percent: t.accrual_percent.clone(),
                        discount_percent: t.discount_percent.clone(),
                        max_redeem_share_percent: t.max_redeem_share_percent.clone(),
                    }),
                    birth_date: customer.profile.as_ref().and_then(|p| p.birth_date),
                    registered_at: customer.registered_at,
                    ..Default::default()
                };
                let occurred_at = r.occurred_at.or_else(|| Some(now_proto()));
                let (award, balance, already) = grant_action(
                    gw,
                    merchant,
                    deadline,
                    context,
                    action,
                    &r.custom_code,
                    &action_ref,
                    occurred_at,
                    action.as_str_name(),
                )
                .await?;
                let balance = match balance {
                    Some(b) => b,
                    None => balance_of(gw, merchant, deadline, &customer.customer_id).await?,
                };
                Ok(pb::RecordActionResponse {
                    award: Some(if already { zero_award() } else { award }),
                    already_granted: already,
                    balance: Some(balance),
                })
            })
            .await
    }

    async fn attach_card(
        &self,
        request: &Request<pb::AttachCardRequest>,
    ) -> Result<pb::AttachCardResponse> {
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        check_request_id("request_id", &r.request_id)?;
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        check_identifier("card", r.card.as_ref(), &mut v);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        gw.requests
            .once(merchant, &r.request_id, "AttachCard", r, || async {
                // cards-svc checks "no card yet" under the customer's row lock, so two
                // concurrent first cards from registers cannot both be attached.
                let first_card_only = for_terminal(&caller);
                let msg = cards::AddIdentifierRequest {
                    merchant_id: merchant.to_owned(),
                    request_id: derived_id("attach", &[&r.request_id]),
                    customer_id: r.customer_id.clone(),
                    input: r.card.clone(),
                    first_card_only,
                };
                let added = dep_call!(
                    gw,
                    deps::CARDS,
                    deadline,
                    Retry::Idempotent,
                    identifiers.add_identifier(msg)
                )
                .map_err(|e| match &e {
                    Error::Downstream(s) if first_card_only && is_cards_limit(s) => {
                        auth::admin_only(
                            "a register attaches a card only to a customer without one (the \
                             first card); more cards are for admin keys, a lost card is \
                             replaced with ReplaceCard",
                        )
                    }
                    _ => e,
                })?;
                Ok(pb::AttachCardResponse {
                    record: added.record.map(|rec| mask_record(rec, &caller)),
                })
            })
            .await
    }

    async fn block_card(
        &self,
        request: &Request<pb::BlockCardRequest>,
    ) -> Result<pb::BlockCardResponse> {
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        check_request_id("request_id", &r.request_id)?;
        let mut v = Violations::new();
        check_identifier("card", r.card.as_ref(), &mut v);
        if cards::BlockReason::try_from(r.reason)
            .map_or(true, |reason| reason == cards::BlockReason::Unspecified)
        {
            v.add("reason", "required");
        }
        check_len("comment", &r.comment, 500, &mut v);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        gw.requests
            .once(merchant, &r.request_id, "BlockCard", r, || async {
                let msg = cards::BlockIdentifierRequest {
                    merchant_id: merchant.to_owned(),
                    request_id: derived_id("block", &[&r.request_id]),
                    input: r.card.clone(),
                    customer_id: String::new(),
                    reason: r.reason,
                    comment: r.comment.clone(),
                };
                let blocked = dep_call!(
                    gw,
                    deps::CARDS,
                    deadline,
                    Retry::Idempotent,
                    identifiers.block_identifier(msg)
                )?;
                Ok(pb::BlockCardResponse {
                    record: blocked.record.map(|rec| mask_record(rec, &caller)),
                })
            })
            .await
    }

    async fn replace_card(
        &self,
        request: &Request<pb::ReplaceCardRequest>,
    ) -> Result<pb::ReplaceCardResponse> {
        let gw = &self.gw;
        let caller = gw.auth.terminal_or_admin(request).await?;
        let r = request.get_ref();
        check_request_id("request_id", &r.request_id)?;
        let mut v = Violations::new();
        check_identifier("old_card", r.old_card.as_ref(), &mut v);
        check_identifier("new_card", r.new_card.as_ref(), &mut v);
        if cards::BlockReason::try_from(r.reason).is_err() {
            v.add("reason", "is not a known reason");
        }
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        gw.requests
            .once(merchant, &r.request_id, "ReplaceCard", r, || async {
                let reason = if r.reason == 0 {
                    cards::BlockReason::Lost as i32
                } else {
                    r.reason
                };
                let msg = cards::ReplaceCardRequest {
                    merchant_id: merchant.to_owned(),
                    request_id: derived_id("replace", &[&r.request_id]),
                    old_card: r.old_card.clone(),
                    new_card: r.new_card.clone(),
                    reason,
                    comment: String::new(),
                };
                let replaced = dep_call!(
                    gw,
                    deps::CARDS,
                    deadline,
                    Retry::Idempotent,
                    identifiers.replace_card(msg)
                )?;
                Ok(pb::ReplaceCardResponse {
                    customer_id: replaced.customer_id,
                    old_card: replaced.old_card.map(|rec| mask_record(rec, &caller)),
                    new_card: replaced.new_card.map(|rec| mask_record(rec, &caller)),
                })
            })
            .await
    }

    async fn list_customers(
        &self,
        request: &Request<pb::ListCustomersRequest>,
    ) -> Result<pb::ListCustomersResponse> {
        let gw = &self.gw;
        let caller = gw.auth.admin(request).await?;
        let r = request.get_ref();
        let mut v = Violations::new();
        let page_size = v.page_size("page_size", r.page_size, PAGE_SIZE, MAX_PAGE_SIZE);
        done(v)?;
        let deadline = Deadline::of(request);
        let msg = cards::ListCustomersRequest {
            merchant_id: caller.merchant_id().to_owned(),
            filter: r.filter.clone(),
            page_size: page_size as i32,
            page_token: r.page_token.clone(),
        };
        let got = dep_call!(
            gw,
            deps::CARDS,
            deadline,
            Retry::Idempotent,
            customers.list_customers(msg)
        )?;
        Ok(pb::ListCustomersResponse {
            customers: got.customers,
            next_page_token: got.next_page_token,
        })
    }

    async fn merge_customers(
        &self,
        request: &Request<pb::MergeCustomersRequest>,
    ) -> Result<pb::MergeCustomersResponse> {
        let gw = &self.gw;
        let caller = gw.auth.admin(request).await?;
        let r = request.get_ref();
        check_request_id("request_id", &r.request_id)?;
        let mut v = Violations::new();
        for (field, id) in [
            ("surviving_customer_id", &r.surviving_customer_id),
            ("merged_customer_id", &r.merged_customer_id),
        ] {
            if id.is_empty() || id.len() > 128 {
                v.add(field, "1 to 128 characters");
            }
        }
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        gw.requests
            .once(merchant, &r.request_id, "MergeCustomers", r, || async {
                let msg = cards::MergeCustomersRequest {
                    merchant_id: merchant.to_owned(),
                    request_id: derived_id("merge", &[&r.request_id]),
                    surviving_customer_id: r.surviving_customer_id.clone(),
                    merged_customer_id: r.merged_customer_id.clone(),
                };
                let merged = dep_call!(
                    gw,
                    deps::CARDS,
                    deadline,
                    Retry::Idempotent,
                    customers.merge_customers(msg)
                )?;
                let balance = balance_of(gw, merchant, deadline, &r.surviving_customer_id).await?;
                Ok(pb::MergeCustomersResponse {
                    customer: merged.customer,
                    balance: Some(balance),
                    merged_now: merged.merged_now,
                })
            })
            .await
    }

    async fn assign_tier(
        &self,
        request: &Request<pb::AssignTierRequest>,
    ) -> Result<pb::AssignTierResponse> {
        let gw = &self.gw;
        let caller = gw.auth.admin(request).await?;
        let r = request.get_ref();
        check_request_id("request_id", &r.request_id)?;
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        if r.tier_code.is_empty() {
            v.add("tier_code", "required");
        }
        check_len("tier_code", &r.tier_code, 64, &mut v);
        if r.reason.trim().is_empty() {
            v.add("reason", "required: 1 to 500 characters");
        }
        check_len("reason", &r.reason, 500, &mut v);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        gw.requests
            .once(merchant, &r.request_id, "AssignTier", r, || async {
                let msg = cards::AssignTierRequest {
                    merchant_id: merchant.to_owned(),
                    request_id: derived_id("assign-tier", &[&r.request_id]),
                    customer_id: r.customer_id.clone(),
                    tier_code: r.tier_code.clone(),
                    source: cards::TierSource::Manual as i32,
                    reason: r.reason.clone(),
                    rule_id: String::new(),
                    program_version: 0,
                    lock: r.lock,
                    effective_at: None,
                };
                let assigned = dep_call!(
                    gw,
                    deps::CARDS,
                    deadline,
                    Retry::Idempotent,
                    tiers.assign_tier(msg)
                )?;
                Ok(pb::AssignTierResponse {
                    assignment: assigned.assignment,
                    changed: assigned.changed,
                })
            })
            .await
    }

    async fn get_tier_history(
        &self,
        request: &Request<pb::GetTierHistoryRequest>,
    ) -> Result<pb::GetTierHistoryResponse> {
        let gw = &self.gw;
        let caller = gw.auth.admin(request).await?;
        let r = request.get_ref();
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        let page_size = v.page_size("page_size", r.page_size, PAGE_SIZE, MAX_PAGE_SIZE);
        done(v)?;
        let msg = cards::GetTierHistoryRequest {
            merchant_id: caller.merchant_id().to_owned(),
            customer_id: r.customer_id.clone(),
            page_size: page_size as i32,
            page_token: r.page_token.clone(),
        };
        let got = dep_call!(
            gw,
            deps::CARDS,
            Deadline::of(request),
            Retry::Idempotent,
            tiers.get_tier_history(msg)
        )?;
        Ok(pb::GetTierHistoryResponse {
            assignments: got.assignments,
            next_page_token: got.next_page_token,
        })
    }

    async fn list_referrals(
        &self,
        request: &Request<pb::ListReferralsRequest>,
    ) -> Result<pb::ListReferralsResponse> {
        let gw = &self.gw;
        let caller = gw.auth.admin(request).await?;
        let r = request.get_ref();
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        let page_size = v.page_size("page_size", r.page_size, PAGE_SIZE, MAX_PAGE_SIZE);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        customer_of(gw, merchant, deadline, &r.customer_id).await?;
        let chain = dep_call!(
            gw,
            deps::CARDS,
            deadline,
            Retry::Idempotent,
            referrals.get_referral_chain(cards::GetReferralChainRequest {
                merchant_id: merchant.to_owned(),
                customer_id: r.customer_id.clone(),
                max_levels: 0,
            })
        )?;
        let referred = dep_call!(
            gw,
            deps::CARDS,
            deadline,
            Retry::Idempotent,
            referrals.list_referrals(cards::ListReferralsRequest {
                merchant_id: merchant.to_owned(),
                customer_id: r.customer_id.clone(),
                level: 1,
                page_size: page_size as i32,
                page_token: r.page_token.clone(),
            })
        )?;
        Ok(pb::ListReferralsResponse {
            referrers: chain.referrers,
            referrals: referred.referrals,
            total_referrals: referred.total_count,
            next_page_token: referred.next_page_token,
        })
    }

    async fn adjust_points(
        &self,
        request: &Request<pb::AdjustPointsRequest>,
    ) -> Result<pb::AdjustPointsResponse> {
        let gw = &self.gw;
        let caller = gw.auth.admin(request).await?;
        let r = request.get_ref();
        check_request_id("request_id", &r.request_id)?;
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        match Decimal::from_str(&r.amount) {
            Ok(a) if !a.is_zero() => {}
            _ => v.add("amount", "a signed decimal string, not zero"),
        }
        if r.reason.trim().is_empty() {
            v.add("reason", "required: 1 to 500 characters");
        }
        check_len("reason", &r.reason, 500, &mut v);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        customer_of(gw, merchant, deadline, &r.customer_id).await?;
        gw.requests
            .once(merchant, &r.request_id, "AdjustPoints", r, || async {
                let msg = ledger::AdjustRequest {
                    merchant_id: merchant.to_owned(),
                    request_id: derived_id("adjust", &[&r.request_id]),
                    customer_id: r.customer_id.clone(),
                    amount: r.amount.clone(),
                    reason: r.reason.clone(),
                    operator: caller.key_id.clone(),
                    expires_at: r.expires_at,
                    allow_negative: r.allow_negative,
                };
                let adjusted = dep_call!(
                    gw,
                    deps::LEDGER,
                    deadline,
                    Retry::Idempotent,
                    ledger.adjust(msg)
                )?;
                Ok(pb::AdjustPointsResponse {
                    balance: adjusted.balance,
                })
            })
            .await
    }

    async fn grant_gift(
        &self,
        request: &Request<pb::GrantGiftRequest>,
    ) -> Result<pb::GrantGiftResponse> {
        let gw = &self.gw;
        let caller = gw.auth.admin(request).await?;
        let r = request.get_ref();
        check_request_id("request_id", &r.request_id)?;
        let mut v = Violations::new();
        check_customer_id(&r.customer_id, &mut v);
        match Decimal::from_str(&r.points) {
            Ok(p) if p > Decimal::ZERO => {}
            _ => v.add("points", "a decimal string > 0"),
        }
        if r.valid_days > 3660 {
            v.add("valid_days", "0 to 3660");
        }
        check_len("reason", &r.reason, 500, &mut v);
        check_len("grant_key", &r.grant_key, 128, &mut v);
        done(v)?;
        let deadline = Deadline::of(request);
        let merchant = caller.merchant_id();
        customer_of(gw, merchant, deadline, &r.customer_id).await?;
        gw.requests
            .once(merchant, &r.request_id, "GrantGift", r, || async {
                let now = Utc::now();
                let expires_at = (r.valid_days > 0).then(|| {
                    timestamps::to_proto(now + chrono::Duration::days(i64::from(r.valid_days)))
                });
                let msg = ledger::GrantGiftRequest {
                    merchant_id: merchant.to_owned(),
                    request_id: derived_id("grant-gift", &[&r.request_id]),
                    customer_id: r.customer_id.clone(),
                    grant: Some(types::PointsGrant {
                        amount: r.points.clone(),
                        kind: types::LotKind::Gift as i32,
                        activates_at: None,
                        expires_at,
                        rule_ids: Vec::new(),
                        grant_key: r.grant_key.clone(),
                    }),
                    action: ActionKind::Unspecified as i32,
                    beneficiary_grants: Vec::new(),
                    description: r.reason.clone(),
                    occurred_at: Some(timestamps::to_proto(now)),
                };
                let granted = dep_call!(
                    gw,
                    deps::LEDGER,
                    deadline,
                    Retry::Idempotent,
                    ledger.grant_gift(msg)
                )?;
                Ok(pb::GrantGiftResponse {
                    lot: granted.lot,
                    already_granted: granted.already_granted,
                    balance: granted.balance,
                })
            })
            .await
    }
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn register_customer(
        &self,
        request: Request<pb::RegisterCustomerRequest>,
    ) -> std::result::Result<Response<pb::RegisterCustomerResponse>, Status> {
        reply(CustomerApi::register_customer(self, &request).await)
    }

    async fn lookup_customer(
        &self,
        request: Request<pb::LookupCustomerRequest>,
    ) -> std::result::Result<Response<pb::LookupCustomerResponse>, Status> {
        reply(CustomerApi::lookup_customer(self, &request).await)
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> std::result::Result<Response<pb::GetCustomerResponse>, Status> {
        reply(CustomerApi::get_customer(self, &request).await)
    }

    async fn update_customer(
        &self,
        _request: Request<pb::UpdateCustomerRequest>,
    ) -> std::result::Result<Response<pb::UpdateCustomerResponse>, Status> {
        Err(unimplemented("UpdateCustomer"))
    }

    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> std::result::Result<Response<pb::SetConsentResponse>, Status> {
        reply(CustomerApi::set_consent(self, &request).await)
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> std::result::Result<Response<pb::GetBalanceResponse>, Status> {
        reply(CustomerApi::get_balance(self, &request).await)
    }

    async fn list_history(
        &self,
        request: Request<pb::ListHistoryRequest>,
    ) -> std::result::Result<Response<pb::ListHistoryResponse>, Status> {
        reply(CustomerApi::list_history(self, &request).await)
    }

    async fn list_purchases(
        &self,
        request: Request<pb::ListPurchasesRequest>,
    ) -> std::result::Result<Response<pb::ListPurchasesResponse>, Status> {
        reply(CustomerApi::list_purchases(self, &request).await)
    }

    async fn record_action(
        &self,
        request: Request<pb::RecordActionRequest>,
    ) -> std::result::Result<Response<pb::RecordActionResponse>, Status> {
        reply(CustomerApi::record_action(self, &request).await)
    }

    async fn attach_card(
        &self,
        request: Request<pb::AttachCardRequest>,
    ) -> std::result::Result<Response<pb::AttachCardResponse>, Status> {
        reply(CustomerApi::attach_card(self, &request).await)
    }

    async fn block_card(
        &self,
        request: Request<pb::BlockCardRequest>,
    ) -> std::result::Result<Response<pb::BlockCardResponse>, Status> {
        reply(CustomerApi::block_card(self, &request).await)
    }

    async fn replace_card(
        &self,
        request: Request<pb::ReplaceCardRequest>,
    ) -> std::result::Result<Response<pb::ReplaceCardResponse>, Status> {
        reply(CustomerApi::replace_card(self, &request).await)
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> std::result::Result<Response<pb::ListCustomersResponse>, Status> {
        reply(CustomerApi::list_customers(self, &request).await)
    }

    async fn merge_customers(
        &self,
        request: Request<pb::MergeCustomersRequest>,
    ) -> std::result::Result<Response<pb::MergeCustomersResponse>, Status> {
        reply(CustomerApi::merge_customers(self, &request).await)
    }

    async fn assign_tier(
        &self,
        request: Request<pb::AssignTierRequest>,
    ) -> std::result::Result<Response<pb::AssignTierResponse>, Status> {
        reply(CustomerApi::assign_tier(self, &request).await)
    }

    async fn get_tier_history(
        &self,
        request: Request<pb::GetTierHistoryRequest>,
    ) -> std::result::Result<Response<pb::GetTierHistoryResponse>, Status> {
        reply(CustomerApi::get_tier_history(self, &request).await)
    }

    async fn adjust_points(
        &self,
        request: Request<pb::AdjustPointsRequest>,
    ) -> std::result::Result<Response<pb::AdjustPointsResponse>, Status> {
        reply(CustomerApi::adjust_points(self, &request).await)
    }

    async fn grant_gift(
        &self,
        request: Request<pb::GrantGiftRequest>,
    ) -> std::result::Result<Response<pb::GrantGiftResponse>, Status> {
        reply(CustomerApi::grant_gift(self, &request).await)
    }

    async fn list_referrals(
        &self,
        request: Request<pb::ListReferralsRequest>,
    ) -> std::result::Result<Response<pb::ListReferralsResponse>, Status> {
        reply(CustomerApi::list_referrals(self, &request).await)
    }

    async fn create_registration_link(
        &self,
        _request: Request<pb::CreateRegistrationLinkRequest>,
    ) -> std::result::Result<Response<pb::CreateRegistrationLinkResponse>, Status> {
        Err(unimplemented("CreateRegistrationLink"))
    }

    async fn list_registration_links(
        &self,
        _request: Request<pb::ListRegistrationLinksRequest>,
    ) -> std::result::Result<Response<pb::ListRegistrationLinksResponse>, Status> {
        Err(unimplemented("ListRegistrationLinks"))
    }

    async fn revoke_registration_link(
        &self,
        _request: Request<pb::RevokeRegistrationLinkRequest>,
    ) -> std::result::Result<Response<pb::RevokeRegistrationLinkResponse>, Status> {
        Err(unimplemented("RevokeRegistrationLink"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(first: &str, last: &str, phone: &str) -> Customer {
        Customer {
            customer_id: "c1".into(),
            profile: Some(cards::CustomerProfile {
                first_name: first.into(),
                last_name: last.into(),
                phone: phone.into(),
                email: "irina@example.ru".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn summary_greets_by_name_and_masks_the_phone() {
        let tier = Tier {
            code: "VIP".into(),
            name: "VIP".into(),
            perks: vec!["free coffee".into()],
            ..Default::default()
        };
        let matched = types::Identifier {
            kind: IdentifierKind::Phone as i32,
            value: "+79123456789".into(),
            display: "+7 912 ***-**-89".into(),
        };
        let s = summary(
            &customer("Ирина", "Смирнова", "+79123456789"),
            Some(&tier),
            Some(&matched),
            IdentifierKind::Phone as i32,
            true,
            true,
        );
        assert_eq!(s.display_name, "Ирина С.");
        assert_eq!(s.phone_masked, "+7 912 ***-**-89");
        assert_eq!(s.tier_code, "VIP");
        assert_eq!(s.perks, vec!["free coffee".to_owned()]);
        assert_eq!(s.matched.as_ref().unwrap().value, "+7 912 ***-**-89");
        assert!(s.registered_now);
        assert!(!format!("{s:?}").contains("+79123456789"));
        assert!(!format!("{s:?}").contains("irina@"));
    }

    #[test]
    fn summary_without_a_name_shows_the_masked_phone() {
        let s = summary(
            &customer("", "", "+79123456789"),
            None,
            None,
            0,
            false,
            true,
        );
        assert_eq!(s.display_name, "+7 912 ***-**-89");
        assert_eq!(s.tier_code, "");
    }

    #[test]
    fn phones_must_be_ascii() {
        let mut v = Violations::new();
        check_phone("phone", "+7 912 345-67-89", &mut v);
        check_phone("phone", "8 (912) 345.67.89", &mut v);
        assert!(v.is_empty(), "{v:?}");
        check_phone("phone", "+٧٩١٢٣٤٥٦٧٨٩", &mut v);
        check_phone("phone", "+7912abc", &mut v);
        check_phone("phone", "12", &mut v);
        assert_eq!(v.fields().len(), 3);
        assert!(v.fields().iter().all(|(f, _)| f == "phone"));
    }
}
