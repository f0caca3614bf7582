//! Helpers shared by the cards-svc tests (`cards_identifiers`, `cards_customers`, `cards_tiers`):
//! the six cards clients and the ledger client of one running suite, request builders, and
//! readers of error details. Every helper goes through gRPC; none touches a database.

// Each cards test module uses its own subset of the helpers.
#![allow(dead_code)]

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use kopilka_proto::cards as pb;
use kopilka_proto::cards::{
    cards_settings_service_client::CardsSettingsServiceClient,
    customer_service_client::CustomerServiceClient,
    identifier_service_client::IdentifierServiceClient,
    referral_service_client::ReferralServiceClient,
    registration_service_client::RegistrationServiceClient, tier_service_client::TierServiceClient,
};
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_proto::types::{self, IdentifierInput, IdentifierKind};
use kopilka_proto::wkt;
use kopilka_runtime::status::{field_violations_of, reason_of};
use kopilka_tests::Channel;
use kopilka_tests::TestSuite;
use rust_decimal::Decimal;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Clients of one running suite's cards-svc and ledger-svc.
#[derive(Clone)]
pub struct Cards {
    pub customers: CustomerServiceClient<Channel>,
    pub identifiers: IdentifierServiceClient<Channel>,
    pub tiers: TierServiceClient<Channel>,
    pub referrals: ReferralServiceClient<Channel>,
    pub registration: RegistrationServiceClient<Channel>,
    pub settings: CardsSettingsServiceClient<Channel>,
    pub ledger: LedgerServiceClient<Channel>,
}

impl Cards {
    pub fn new(suite: &TestSuite) -> Self {
        let cards = suite.channel(suite.addrs.cards);
        Cards {
            customers: CustomerServiceClient::new(cards.clone()),
            identifiers: IdentifierServiceClient::new(cards.clone()),
            tiers: TierServiceClient::new(cards.clone()),
            referrals: ReferralServiceClient::new(cards.clone()),
            registration: RegistrationServiceClient::new(cards.clone()),
            settings: CardsSettingsServiceClient::new(cards),
            ledger: LedgerServiceClient::new(suite.channel(suite.addrs.ledger)),
        }
    }
}

// ---- request pieces ---------------------------------------------------------------------------

/// A fresh request id.
pub fn rid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("req-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A raw input, kind auto-detected.
pub fn raw(raw: &str) -> IdentifierInput {
    hinted(raw, IdentifierKind::Unspecified)
}

/// A raw input with a kind hint.
pub fn hinted(raw: &str, kind: IdentifierKind) -> IdentifierInput {
    IdentifierInput {
        raw: raw.into(),
        kind_hint: kind as i32,
    }
}

pub fn mask(paths: &[&str]) -> Option<wkt::FieldMask> {
    Some(wkt::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// `prefix` followed by its Luhn check digit.
pub fn with_luhn(prefix: &str) -> String {
    let sum: u32 = prefix
        .bytes()
        .rev()
        .map(|b| u32::from(b - b'0'))
        .enumerate()
        .map(|(i, d)| match (i % 2 == 0, d * 2) {
            (false, _) => d,
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
        })
        .sum();
    format!("{prefix}{}", (10 - sum % 10) % 10)
}

/// `prefix` (12 digits) followed by its EAN-13 check digit.
pub fn with_ean13(prefix: &str) -> String {
    let sum: u32 = prefix
        .bytes()
        .map(|b| u32::from(b - b'0'))
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { d } else { d * 3 })
        .sum();
    format!("{prefix}{}", (10 - sum % 10) % 10)
}

/// Whether the 13 digits carry a valid EAN-13 check digit.
pub fn is_ean13(number: &str) -> bool {
    number.len() == 13 && with_ean13(&number[..12]) == number
}

/// `number` with its last digit changed (so its check digit is wrong).
pub fn wrong_check_digit(number: &str) -> String {
    let (head, last) = number.split_at(number.len() - 1);
    let d = last.parse::<u32>().unwrap();
    format!("{head}{}", (d + 1) % 10)
}

// ---- calls ------------------------------------------------------------------------------------

/// Sets the merchant's card-number formats.
pub async fn set_formats(c: &Cards, merchant: &str, formats: Vec<pb::CardNumberFormat>) {
    c.settings
        .clone()
        .update_cards_settings(pb::UpdateCardsSettingsRequest {
            merchant_id: merchant.into(),
            request_id: rid(),
            settings: Some(pb::CardsSettings {
                card_number_formats: formats,
                ..Default::default()
            }),
            update_mask: mask(&["card_number_formats"]),
        })
        .await
        .expect("UpdateCardsSettings");
}

pub fn format(name: &str, pattern: &str, checksum: pb::CardChecksum) -> pb::CardNumberFormat {
    pb::CardNumberFormat {
        name: name.into(),
        pattern: pattern.into(),
        checksum: checksum as i32,
    }
}

/// A CreateCustomer request with a phone (may be empty) and identifiers typed as given.
pub fn new_customer(
    merchant: &str,
    phone: &str,
    ids: &[IdentifierInput],
) -> pb::CreateCustomerRequest {
    pb::CreateCustomerRequest {
        merchant_id: merchant.into(),
        request_id: rid(),
        profile: Some(pb::CustomerProfile {
            first_name: "Ivan".into(),
            phone: phone.into(),
            ..Default::default()
        }),
        identifiers: ids.to_vec(),
        registration: Some(pb::RegistrationSource {
            channel: pb::RegistrationChannel::Register as i32,
            store_id: "store-1".into(),
            terminal_id: "till-1".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn create(
    c: &Cards,
    r: pb::CreateCustomerRequest,
) -> Result<pb::CreateCustomerResponse, Status> {
    c.customers
        .clone()
        .create_customer(r)
        .await
        .map(|r| r.into_inner())
}

/// Creates a customer and returns it (panics on failure).
pub async fn customer(
    c: &Cards,
    merchant: &str,
    phone: &str,
    ids: &[IdentifierInput],
) -> pb::Customer {
    create(c, new_customer(merchant, phone, ids))
        .await
        .expect("CreateCustomer")
        .customer
        .expect("customer")
}

pub async fn get_customer(c: &Cards, merchant: &str, id: &str) -> Result<pb::Customer, Status> {
    c.customers
        .clone()
        .get_customer(pb::GetCustomerRequest {
            merchant_id: merchant.into(),
            customer_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().customer.expect("customer"))
}

pub async fn lookup(
    c: &Cards,
    merchant: &str,
    input: IdentifierInput,
) -> Result<pb::LookupCustomerResponse, Status> {
    c.identifiers
        .clone()
        .lookup_customer(pb::LookupCustomerRequest {
            merchant_id: merchant.into(),
            input: Some(input),
            include_referral_chain: false,
        })
        .await
        .map(|r| r.into_inner())
}

/// The id of the customer `input` finds (panics when none does).
pub async fn found(c: &Cards, merchant: &str, input: IdentifierInput) -> String {
    let what = format!("{input:?}");
    lookup(c, merchant, input)
        .await
        .unwrap_or_else(|e| panic!("lookup of {what}: {e:?}"))
        .customer
        .expect("customer")
        .customer_id
}

pub async fn parse(
    c: &Cards,
    merchant: &str,
    input: IdentifierInput,
) -> Result<pb::ParseIdentifierResponse, Status> {
    c.identifiers
        .clone()
        .parse_identifier(pb::ParseIdentifierRequest {
            merchant_id: merchant.into(),
            input: Some(input),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn add_identifier(
    c: &Cards,
    merchant: &str,
    customer: &str,
    input: IdentifierInput,
) -> Result<pb::IdentifierRecord, Status> {
    c.identifiers
        .clone()
        .add_identifier(pb::AddIdentifierRequest {
            merchant_id: merchant.into(),
            request_id: rid(),
            customer_id: customer.into(),
            input: Some(input),
            first_card_only: false,
        })
        .await
        .map(|r| r.into_inner().record.expect("record"))
}

/// Books `amount` purchase points for the customer in the ledger.
pub async fn accrue(c: &Cards, merchant: &str, customer: &str, amount: &str) {
    c.ledger
        .clone()
        .accrue(ledger_pb::AccrueRequest {
            merchant_id: merchant.into(),
            request_id: rid(),
            customer_id: customer.into(),
            grant: Some(types::PointsGrant {
                amount: amount.into(),
                kind: types::LotKind::Purchase as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("Accrue");
}

/// The customer's available points in the ledger.
pub async fn available(c: &Cards, merchant: &str, customer: &str) -> Decimal {
    let b = c
        .ledger
        .clone()
        .get_balance(ledger_pb::GetBalanceRequest {
            merchant_id: merchant.into(),
            customer_id: customer.into(),
            expiring_within: None,
        })
        .await
        .expect("GetBalance")
        .into_inner()
        .balance
        .expect("balance");
    Decimal::from_str(&b.available).expect("a decimal")
}

pub fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

// ---- errors -----------------------------------------------------------------------------------

/// The ErrorInfo reason of a failed call with `code`; panics on success or another code.
pub fn reason<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> String {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    reason_of(&status).unwrap_or_else(|| panic!("no ErrorInfo reason in {status:?}"))
}

/// The ErrorInfo reason and metadata of a failed call with `code`, the metadata sorted by key;
/// panics on success or another code.
pub fn refusal<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
) -> (String, Vec<(String, String)>) {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "kopilka");
    let mut metadata: Vec<_> = info.metadata.into_iter().collect();
    metadata.sort();
    (info.reason, metadata)
}

/// `(reason, metadata)` as [`refusal`] returns it, from literals.
pub fn refused_with(reason: &str, metadata: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let mut metadata: Vec<_> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    metadata.sort();
    (reason.to_owned(), metadata)
}

/// The field paths of an INVALID_ARGUMENT status.
pub fn violations<T: std::fmt::Debug>(result: Result<T, Status>) -> Vec<String> {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let v = field_violations_of(&status);
    assert!(
        !v.is_empty(),
        "INVALID_ARGUMENT without field violations: {status:?}"
    );
    v.into_iter().map(|(f, _)| f).collect()
}

/// The owner named by an ALREADY_EXISTS IDENTIFIER_TAKEN status.
pub fn taken_by<T: std::fmt::Debug>(result: Result<T, Status>) -> String {
    let status = result.expect_err("the identifier must be taken");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, "IDENTIFIER_TAKEN");
    assert_eq!(info.domain, "kopilka");
    info.metadata
        .get("customer_id")
        .cloned()
        .unwrap_or_else(|| panic!("no customer_id metadata in {status:?}"))
}

/// A 13-digit card number "77…" with a Luhn check digit that is not also a valid EAN-13 (so a
/// typed number reads as a CARD_NUMBER, not as a barcode), nor is it with its last digit
/// changed; `seed` picks different numbers.
pub fn luhn_card(seed: u32) -> String {
    (0..100u32)
        .map(|n| with_luhn(&format!("77{:08}{:02}", seed, n)))
        .find(|card| !is_ean13(card) && !is_ean13(&wrong_check_digit(card)))
        .expect("some number fits")
}
