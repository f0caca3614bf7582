//! Every error reason the gateway can return, produced through the gateway's own API on SQLite
//! and on PostgreSQL, with what errors.proto promises for it: the gRPC code, a
//! `google.rpc.ErrorInfo` in domain `kopilka` with the reason and exactly the metadata keys
//! documented for it, and field violations that name fields of the caller's request. The walk
//! ends by checking that every value of `ErrorReason` was either seen or is listed as not
//! reachable through the gateway, with why — a new reason cannot go unchecked.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, Utc};
use kopilka_proto::gateway::admin_service_client::AdminServiceClient;
use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::customer_service_client::CustomerServiceClient;
use kopilka_proto::gateway::{self as gw, buyer::Who, Buyer};
use kopilka_proto::types::{BasketLine, ErrorReason, IdentifierInput, IdentifierKind};
use kopilka_proto::{cards as cards_pb, rules as rules_pb};
use kopilka_runtime::status::{field_violations_of, ERROR_DOMAIN};
use kopilka_runtime::timestamps;
use kopilka_tests::gateway::{authed, SeededMerchant};
use kopilka_tests::Channel;
use kopilka_tests::{on_both_backends, TestSuite};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::cards_support::{with_ean13, wrong_check_digit};

on_both_backends!(every_error_reason_carries_its_documented_details);

/// Reasons a register or an admin cannot get from the gateway today, and why.
const NOT_FROM_THE_GATEWAY: &[(&str, &str)] = &[
    ("UNSPECIFIED", "not a reason"),
    (
        "MERCHANT_SUSPENDED",
        "no served RPC suspends a merchant (PlatformService is unserved)",
    ),
    (
        "DEPENDENCY_UNAVAILABLE",
        "needs a service down: gateway_outages kills processes",
    ),
    (
        "IDENTIFIER_NOT_FOUND",
        "only cards-svc's RemoveIdentifier returns it; the gateway has none",
    ),
    (
        "REFERRAL_CYCLE",
        "the gateway names a referrer only for a customer being created",
    ),
    (
        "SELF_REFERRAL",
        "the gateway names a referrer only for a customer being created",
    ),
    (
        "REFERRER_ALREADY_SET",
        "the gateway names a referrer only for a customer being created",
    ),
    (
        "REGISTRATION_TOKEN_INVALID",
        "registration links are unserved",
    ),
    (
        "REGISTRATION_TOKEN_EXPIRED",
        "registration links are unserved",
    ),
    ("REGISTRATION_INCOMPLETE", "registration links are unserved"),
    (
        "HOLD_NOT_FOUND",
        "the gateway keeps a checkout's hold itself; registers never name one",
    ),
    (
        "HOLD_EXPIRED",
        "the gateway keeps a checkout's hold itself; registers never name one",
    ),
    (
        "HOLD_FINALIZED",
        "the gateway keeps a checkout's hold itself; registers never name one",
    ),
    (
        "HOLD_AMOUNT_EXCEEDED",
        "the gateway keeps a checkout's hold itself; registers never name one",
    ),
    (
        "RECEIPT_NOT_FOUND",
        "the gateway answers CHECKOUT_NOT_FOUND for its own receipts",
    ),
    (
        "RECEIPT_ALREADY_RECORDED",
        "answered as CHECKOUT_STATE_CONFLICT",
    ),
    (
        "RECEIPT_ALREADY_REFUNDED",
        "answered as CHECKOUT_STATE_CONFLICT",
    ),
    (
        "BASKET_INVALID",
        "the gateway's own checks refuse such baskets first",
    ),
    ("MERCHANT_NOT_FOUND", "platform API only (unserved)"),
    ("TEMPLATE_NOT_FOUND", "MarketingService is unserved"),
    ("TEMPLATE_INVALID", "MarketingService is unserved"),
    ("CHANNEL_DISABLED", "MarketingService is unserved"),
    ("CONSENT_MISSING", "MarketingService is unserved"),
    ("MESSAGE_NOT_FOUND", "MarketingService is unserved"),
    ("CAMPAIGN_NOT_FOUND", "MarketingService is unserved"),
    ("CAMPAIGN_STATE_CONFLICT", "MarketingService is unserved"),
    ("REVIEW_TOKEN_INVALID", "PublicService is unserved"),
    ("REVIEW_ALREADY_SUBMITTED", "PublicService is unserved"),
    ("WEBHOOK_NOT_FOUND", "webhooks are unserved"),
    (
        "NEGATIVE_BALANCE_NOT_ALLOWED",
        "needs a merchant's max_negative_balance; no served gateway RPC sets it",
    ),
    (
        "SERVICE_TOKEN_INVALID",
        "internal services only: internal_access tests it",
    ),
    ("LINK_NOT_FOUND", "registration links are unserved"),
    (
        "SCALE_LOCKED",
        "ledger settings are not changed through the gateway",
    ),
    (
        "INSUFFICIENT_STAMPS",
        "the gateway consumes only the stamps rules-svc counted on the card",
    ),
    (
        "IDENTIFIER_AMBIGUOUS",
        "cards-svc's own tests; a gateway walk needs two merchants' formats",
    ),
];

const PROGRAM: &str = r#"name: errors
settings: {currency: RUB, time_zone: Europe/Moscow}
rules:
  - id: pay
    name: pay with points
    redemption_limit: {max_share_percent: "50"}
"#;

struct World {
    m: SeededMerchant,
    admin: AdminServiceClient<Channel>,
    checkout: CheckoutServiceClient<Channel>,
    customers: CustomerServiceClient<Channel>,
    /// Reasons checked so far.
    seen: BTreeSet<String>,
    /// What did not match.
    failures: Vec<String>,
}

impl World {
    /// Checks `result` is refused with `code`, `reason` and exactly `metadata`; returns the
    /// status for further checks.
    fn refused<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        result: Result<tonic::Response<T>, Status>,
        code: Code,
        reason: &str,
        metadata: &[(&str, &str)],
    ) -> Status {
        let status = match result {
            Ok(answer) => panic!("{what}: expected {reason}, got {answer:?}"),
            Err(status) => status,
        };
        let info = status
            .get_details_error_info()
            .unwrap_or_else(|| panic!("{what}: no ErrorInfo in {status:?}"));
        let expected: BTreeMap<String, String> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let got: BTreeMap<String, String> = info.metadata.clone().into_iter().collect();
        // Every mismatch of the walk is reported at its end, not only the first.
        if (
            status.code(),
            info.domain.as_str(),
            info.reason.as_str(),
            &got,
        ) != (code, ERROR_DOMAIN, reason, &expected)
        {
            self.failures.push(format!(
                "{what}: expected {code:?} {reason} {expected:?}, got {:?} {} {} {got:?} ({})",
                status.code(),
                info.domain,
                info.reason,
                status.message()
            ));
        }
        self.seen.insert(reason.to_owned());
        status
    }

    fn admin_key(&self) -> &str {
        &self.m.admin_key
    }

    fn till(&self) -> &str {
        &self.m.terminal_key
    }

    async fn register(&mut self, rid: &str, phone: &str, cards: &[IdentifierInput]) -> String {
        self.customers
            .register_customer(authed(
                gw::RegisterCustomerRequest {
                    request_id: rid.into(),
                    phone: phone.into(),
                    cards: cards.to_vec(),
                    ..Default::default()
                },
                &self.m.terminal_key,
            ))
            .await
            .expect("registered")
            .into_inner()
            .customer
            .expect("a customer")
            .customer_id
    }
}

fn ean(raw: &str) -> IdentifierInput {
    IdentifierInput {
        raw: raw.into(),
        kind_hint: IdentifierKind::BarcodeEan13 as i32,
    }
}

fn typed(raw: &str) -> IdentifierInput {
    IdentifierInput {
        raw: raw.into(),
        kind_hint: 0,
    }
}

fn customer(id: &str) -> Option<Buyer> {
    Some(Buyer {
        who: Some(Who::CustomerId(id.into())),
    })
}

fn line(id: &str, price: &str, quantity: &str) -> BasketLine {
    BasketLine {
        line_id: id.into(),
        product_id: format!("p-{id}"),
        name: format!("product {id}"),
        unit_price: price.into(),
        quantity: quantity.into(),
        ..Default::default()
    }
}

fn fields(status: &Status) -> Vec<String> {
    field_violations_of(status)
        .into_iter()
        .map(|(f, _)| f)
        .collect()
}

fn key_id_of(key: &str) -> String {
    key.strip_prefix("kpk_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id.to_owned())
        .expect("a kpk_ key")
}

fn program(document: &str) -> Option<rules_pb::Program> {
    Some(rules_svc::document::from_yaml(document).expect("a program document"))
}

async fn every_error_reason_carries_its_documented_details(suite: TestSuite) {
    let m = suite.seed_merchant("errs").await;
    let channel = suite.channel(suite.addrs.gateway);
    let mut w = World {
        m,
        admin: AdminServiceClient::new(channel.clone()),
        checkout: CheckoutServiceClient::new(channel.clone()),
        customers: CustomerServiceClient::new(channel),
        seen: BTreeSet::new(),
        failures: Vec::new(),
    };
    let till = w.till().to_owned();
    let admin = w.admin_key().to_owned();
    let calculate = |lines: Vec<BasketLine>| gw::CalculateRequest {
        lines,
        ..Default::default()
    };

    // ---- before any program -----------------------------------------------------------------
    let r = w
        .checkout
        .calculate(authed(calculate(vec![line("a", "100", "1")]), &till))
        .await;
    w.refused(
        "no program",
        r,
        Code::FailedPrecondition,
        "NO_ACTIVE_PROGRAM",
        &[],
    );

    // ---- input ---------------------------------------------------------------------------------
    let r = w.checkout.calculate(authed(calculate(vec![]), &till)).await;
    let s = w.refused(
        "no lines",
        r,
        Code::InvalidArgument,
        "VALIDATION_FAILED",
        &[],
    );
    assert_eq!(fields(&s), ["lines"]);
    let many = (0..501).map(|i| line(&i.to_string(), "1", "1")).collect();
    let r = w.checkout.calculate(authed(calculate(many), &till)).await;
    let s = w.refused(
        "501 lines",
        r,
        Code::InvalidArgument,
        "LIMIT_EXCEEDED",
        &[("field", "lines"), ("limit", "500")],
    );
    assert_eq!(fields(&s), ["lines"]);
    let ahead = gw::CalculateRequest {
        lines: vec![line("a", "100", "1")],
        occurred_at: Some(timestamps::to_proto(Utc::now() + Duration::hours(1))),
        ..Default::default()
    };
    let r = w.checkout.calculate(authed(ahead, &till)).await;
    let s = w.refused(
        "a sale an hour ahead",
        r,
        Code::InvalidArgument,
        "TIMESTAMP_IN_FUTURE",
        &[("field", "occurred_at")],
    );
    assert_eq!(fields(&s), ["occurred_at"]);
    let r = w
        .admin
        .list_stores(authed(
            gw::ListStoresRequest {
                page_token: "zz".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await;
    let s = w.refused(
        "a foreign page token",
        r,
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
        &[],
    );
    assert_eq!(fields(&s), ["page_token"]);
    let r = w
        .admin
        .list_stores(authed(
            gw::ListStoresRequest {
                page_size: 101,
                ..Default::default()
            },
            &admin,
        ))
        .await;
    w.refused(
        "a page of 101",
        r,
        Code::InvalidArgument,
        "LIMIT_EXCEEDED",
        &[("field", "page_size"), ("limit", "100")],
    );
    let store = |name: &str| gw::CreateStoreRequest {
        request_id: "store-1".into(),
        store: Some(gw::Store {
            name: name.into(),
            time_zone: "Europe/Moscow".into(),
            ..Default::default()
        }),
    };
    let second = w
        .admin
        .create_store(authed(store("Second"), &admin))
        .await
        .expect("a store")
        .into_inner()
        .store
        .unwrap();
    let r = w.admin.create_store(authed(store("Third"), &admin)).await;
    w.refused(
        "a request id reused",
        r,
        Code::FailedPrecondition,
        "IDEMPOTENCY_KEY_REUSED",
        &[("request_id", "store-1")],
    );

    // ---- access --------------------------------------------------------------------------------
    let r = w
        .checkout
        .get_checkout(tonic::Request::new(gw::GetCheckoutRequest {
            receipt_id: "r".into(),
        }))
        .await;
    w.refused("no key", r, Code::Unauthenticated, "API_KEY_INVALID", &[]);
    let r = w
        .admin
        .list_stores(authed(gw::ListStoresRequest::default(), &till))
        .await;
    w.refused(
        "a terminal key on the admin API",
        r,
        Code::PermissionDenied,
        "PERMISSION_DENIED_KEY_SCOPE",
        &[
            ("scope", "KEY_SCOPE_TERMINAL"),
            ("required_scope", "KEY_SCOPE_ADMIN"),
        ],
    );
    let terminal_with_key = |rid: &'static str| {
        let mut admin_api = w.admin.clone();
        let admin = admin.clone();
        let store_id = second.store_id.clone();
        async move {
            let terminal = admin_api
                .create_terminal(authed(
                    gw::CreateTerminalRequest {
                        request_id: format!("{rid}-terminal"),
                        store_id,
                        name: rid.into(),
                        ..Default::default()
                    },
                    &admin,
                ))
                .await
                .expect("a terminal")
                .into_inner()
                .terminal
                .unwrap();
            let key = admin_api
                .issue_api_key(authed(
                    gw::IssueApiKeyRequest {
                        request_id: format!("{rid}-key"),
                        scope: gw::KeyScope::Terminal as i32,
                        terminal_id: terminal.terminal_id.clone(),
                        name: rid.into(),
                        ..Default::default()
                    },
                    &admin,
                ))
                .await
                .expect("a key")
                .into_inner()
                .secret;
            (terminal.terminal_id, key)
        }
    };
    let (disabled, disabled_key) = terminal_with_key("off").await;
    let (_, busy_key) = terminal_with_key("busy").await;
    w.admin
        .disable_terminal(authed(
            gw::DisableTerminalRequest {
                request_id: "disable".into(),
                terminal_id: disabled.clone(),
            },
            &admin,
        ))
        .await
        .expect("disabled");
    let get = || gw::GetCheckoutRequest {
        receipt_id: "none".into(),
    };
    let r = w.checkout.get_checkout(authed(get(), &disabled_key)).await;
    w.refused(
        "a disabled terminal's key",
        r,
        Code::PermissionDenied,
        "TERMINAL_DISABLED",
        &[("terminal_id", disabled.as_str())],
    );
    // More calls at once than the terminal's limit (50 a second in the suite): the first
    // refusal says the limit.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..150 {
        let mut api = w.checkout.clone();
        let key = busy_key.clone();
        calls.spawn(async move { api.get_checkout(authed(get(), &key)).await });
    }
    let limited = calls
        .join_all()
        .await
        .into_iter()
        .find(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .expect("150 calls at once exceed 50 a second");
    let s = w.refused(
        "a burst",
        limited,
        Code::ResourceExhausted,
        "RATE_LIMITED",
        &[("limit", "50")],
    );
    assert!(s.get_details_retry_info().is_some(), "{s:?}");

    // ---- admin records -------------------------------------------------------------------------
    let r = w
        .admin
        .get_store(authed(
            gw::GetStoreRequest {
                store_id: "nope".into(),
            },
            &admin,
        ))
        .await;
    w.refused(
        "an unknown store",
        r,
        Code::NotFound,
        "STORE_NOT_FOUND",
        &[],
    );
    let r = w
        .admin
        .disable_terminal(authed(
            gw::DisableTerminalRequest {
                request_id: "disable-nope".into(),
                terminal_id: "nope".into(),
            },
            &admin,
        ))
        .await;
    w.refused(
        "an unknown terminal",
        r,
        Code::NotFound,
        "TERMINAL_NOT_FOUND",
        &[],
    );
    let r = w
        .admin
        .revoke_api_key(authed(
            gw::RevokeApiKeyRequest {
                request_id: "revoke-nope".into(),
                key_id: "nope".into(),
            },
            &admin,
        ))
        .await;
    w.refused(
        "an unknown key",
        r,
        Code::NotFound,
        "API_KEY_NOT_FOUND",
        &[],
    );
    let r = w
        .admin
        .revoke_api_key(authed(
            gw::RevokeApiKeyRequest {
                request_id: "revoke-last".into(),
                key_id: key_id_of(&admin),
            },
            &admin,
        ))
        .await;
    w.refused(
        "the last admin key",
        r,
        Code::FailedPrecondition,
        "LAST_ADMIN_KEY",
        &[],
    );

    // ---- programs ------------------------------------------------------------------------------
    let bad = "name: bad\nsettings: {currency: RUB, time_zone: Europe/Moscow}\nrules:\n  - id: x\n    name: a\n    accrue_percent: {percent: \"3\"}\n  - id: x\n    name: b\n    accrue_percent: {percent: \"3\"}\n";
    let r = w
        .admin
        .apply_program(authed(
            gw::ApplyProgramRequest {
                request_id: "apply-bad".into(),
                program: program(bad),
                ..Default::default()
            },
            &admin,
        ))
        .await;
    let s = w.refused(
        "duplicate rule ids",
        r,
        Code::InvalidArgument,
        "PROGRAM_INVALID",
        &[],
    );
    // Paths inside a program document are the document's, as errors.proto says.
    assert_eq!(fields(&s), ["rules[1].id"], "{s:?}");
    let applied = w
        .admin
        .apply_program(authed(
            gw::ApplyProgramRequest {
                request_id: "apply".into(),
                program: program(PROGRAM),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("applied")
        .into_inner();
    let active = applied.version.expect("a version").version;
    let r = w
        .admin
        .get_program_version(authed(
            gw::GetProgramVersionRequest { version: 999 },
            &admin,
        ))
        .await;
    w.refused(
        "version 999",
        r,
        Code::NotFound,
        "VERSION_NOT_FOUND",
        &[("version", "999")],
    );
    let r = w
        .admin
        .update_program_draft(authed(
            gw::UpdateProgramDraftRequest {
                request_id: "update-published".into(),
                version: active,
                program: program(PROGRAM),
                ..Default::default()
            },
            &admin,
        ))
        .await;
    w.refused(
        "changing a published version",
        r,
        Code::FailedPrecondition,
        "VERSION_IMMUTABLE",
        &[("version", &active.to_string())],
    );
    let draft = w
        .admin
        .create_program_draft(authed(
            gw::CreateProgramDraftRequest {
                request_id: "draft".into(),
                source: Some(gw::create_program_draft_request::Source::Program(
                    program(PROGRAM).unwrap(),
                )),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("a draft")
        .into_inner()
        .version
        .expect("a version")
        .version;
    let r = w
        .admin
        .activate_program(authed(
            gw::ActivateProgramRequest {
                request_id: "activate-draft".into(),
                version: draft,
                activate_at: None,
            },
            &admin,
        ))
        .await;
    w.refused(
        "activating a draft",
        r,
        Code::FailedPrecondition,
        "PROGRAM_NOT_PUBLISHED",
        &[("version", &draft.to_string())],
    );
    let r = w
        .admin
        .update_program_draft(authed(
            gw::UpdateProgramDraftRequest {
                request_id: "update-stale".into(),
                version: draft,
                program: program(PROGRAM),
                etag: "stale".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await;
    w.refused(
        "a stale etag",
        r,
        Code::Aborted,
        "CONCURRENT_MODIFICATION",
        &[("version", &draft.to_string())],
    );
    let r = w
        .admin
        .cancel_program_activation(authed(
            gw::CancelProgramActivationRequest {
                request_id: "cancel-nope".into(),
                activation_id: "nope".into(),
            },
            &admin,
        ))
        .await;
    w.refused(
        "an unknown activation",
        r,
        Code::NotFound,
        "ACTIVATION_NOT_FOUND",
        &[],
    );

    // ---- customers and cards -------------------------------------------------------------------
    let card_a = with_ean13("460000000101");
    let card_b = with_ean13("460000000102");
    let alice = w
        .register("reg-alice", "+7 912 300-00-01", &[ean(&card_a)])
        .await;
    let bob = w
        .register("reg-bob", "+7 912 300-00-02", &[ean(&card_b)])
        .await;
    let carol = w.register("reg-carol", "+7 912 300-00-03", &[]).await;
    let lookup = |input: IdentifierInput| gw::LookupCustomerRequest {
        identifier: Some(input),
    };
    let r = w
        .customers
        .lookup_customer(authed(lookup(typed("+7 912 300-00-99")), &till))
        .await;
    w.refused(
        "an unknown phone",
        r,
        Code::NotFound,
        "CARD_NOT_FOUND",
        &[("kind", "IDENTIFIER_KIND_PHONE"), ("can_register", "true")],
    );
    let unknown_card = with_ean13("460000000199");
    let r = w
        .customers
        .lookup_customer(authed(lookup(ean(&unknown_card)), &till))
        .await;
    w.refused(
        "an unknown card",
        r,
        Code::NotFound,
        "CARD_NOT_FOUND",
        &[
            ("kind", "IDENTIFIER_KIND_BARCODE_EAN13"),
            ("can_register", "false"),
        ],
    );
    let r = w
        .customers
        .lookup_customer(authed(lookup(ean(&wrong_check_digit(&card_a))), &till))
        .await;
    let s = w.refused(
        "a wrong check digit",
        r,
        Code::InvalidArgument,
        "INVALID_CHECKSUM",
        &[("kind", "IDENTIFIER_KIND_BARCODE_EAN13")],
    );
    assert_eq!(fields(&s), ["identifier.raw"]);
    let uid = IdentifierInput {
        raw: "04:a2:24".into(),
        kind_hint: IdentifierKind::ContactlessUid as i32,
    };
    let r = w
        .customers
        .lookup_customer(authed(lookup(uid), &till))
        .await;
    let s = w.refused(
        "a malformed UID",
        r,
        Code::InvalidArgument,
        "INVALID_IDENTIFIER",
        &[("kind", "IDENTIFIER_KIND_CONTACTLESS_UID")],
    );
    assert_eq!(fields(&s), ["identifier.raw"]);
    let r = w
        .customers
        .get_customer(authed(
            gw::GetCustomerRequest {
                customer_id: "nope".into(),
            },
            &till,
        ))
        .await;
    w.refused(
        "an unknown customer",
        r,
        Code::NotFound,
        "CUSTOMER_NOT_FOUND",
        &[],
    );
    let r = w
        .customers
        .attach_card(authed(
            gw::AttachCardRequest {
                request_id: "attach-taken".into(),
                customer_id: bob.clone(),
                card: Some(ean(&card_a)),
            },
            &admin,
        ))
        .await;
    w.refused(
        "attaching alice's card to bob",
        r,
        Code::AlreadyExists,
        "IDENTIFIER_TAKEN",
        // A barcode is kept as the card number it encodes.
        &[
            ("kind", "IDENTIFIER_KIND_CARD_NUMBER"),
            ("customer_id", alice.as_str()),
        ],
    );
    w.customers
        .block_card(authed(
            gw::BlockCardRequest {
                request_id: "block-b".into(),
                card: Some(ean(&card_b)),
                reason: cards_pb::BlockReason::Lost as i32,
                comment: String::new(),
            },
            &admin,
        ))
        .await
        .expect("blocked");
    let r = w
        .customers
        .lookup_customer(authed(lookup(ean(&card_b)), &till))
        .await;
    w.refused(
        "a lost card",
        r,
        Code::FailedPrecondition,
        "CARD_BLOCKED",
        &[("block_reason", "BLOCK_REASON_LOST"), ("replaced", "false")],
    );
    let r = w
        .customers
        .register_customer(authed(
            gw::RegisterCustomerRequest {
                request_id: "reg-referred".into(),
                phone: "+7 912 300-00-04".into(),
                details: Some(gw::CustomerDetails {
                    referrer: Some(typed("+7 912 300-00-98")),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &till,
        ))
        .await;
    w.refused(
        "an unknown referrer",
        r,
        Code::NotFound,
        "REFERRER_NOT_FOUND",
        &[],
    );
    // cards-svc reads the e-mail; its refusal names the register's field, not cards' own.
    let r = w
        .customers
        .register_customer(authed(
            gw::RegisterCustomerRequest {
                request_id: "reg-email".into(),
                phone: "+7 912 300-00-05".into(),
                details: Some(gw::CustomerDetails {
                    email: "not an e-mail".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &till,
        ))
        .await;
    let s = w.refused(
        "a bad e-mail",
        r,
        Code::InvalidArgument,
        "VALIDATION_FAILED",
        &[],
    );
    assert_eq!(fields(&s), ["details.email"]);
    let merge = |rid: &str, surviving: &str, merged: &str| gw::MergeCustomersRequest {
        request_id: rid.into(),
        surviving_customer_id: surviving.into(),
        merged_customer_id: merged.into(),
    };
    let r = w
        .customers
        .merge_customers(authed(merge("merge-self", &alice, &alice), &admin))
        .await;
    w.refused(
        "merging a customer into itself",
        r,
        Code::FailedPrecondition,
        "MERGE_CONFLICT",
        &[("detail", "same_customer")],
    );
    w.customers
        .merge_customers(authed(merge("merge-carol", &alice, &carol), &admin))
        .await
        .expect("merged");
    let r = w
        .customers
        .attach_card(authed(
            gw::AttachCardRequest {
                request_id: "attach-merged".into(),
                customer_id: carol.clone(),
                card: Some(ean(&with_ean13("460000000103"))),
            },
            &admin,
        ))
        .await;
    w.refused(
        "a card for a merged customer",
        r,
        Code::FailedPrecondition,
        "CUSTOMER_MERGED",
        &[("surviving_customer_id", alice.as_str())],
    );

    // ---- tiers ---------------------------------------------------------------------------------
    for (code, rank, default) in [("BASE", 0, true), ("SILVER", 1, false)] {
        w.admin
            .upsert_tier(authed(
                gw::UpsertTierRequest {
                    request_id: format!("tier-{code}"),
                    tier: Some(cards_pb::Tier {
                        code: code.into(),
                        name: code.into(),
                        rank,
                        is_default: default,
                        ..Default::default()
                    }),
                },
                &admin,
            ))
            .await
            .expect("a tier");
    }
    let r = w
        .admin
        .upsert_tier(authed(
            gw::UpsertTierRequest {
                request_id: "tier-GOLD".into(),
                tier: Some(cards_pb::Tier {
                    code: "GOLD".into(),
                    name: "GOLD".into(),
                    rank: 1,
                    ..Default::default()
                }),
            },
            &admin,
        ))
        .await;
    w.refused(
        "a rank another tier has",
        r,
        Code::FailedPrecondition,
        "TIER_RANK_TAKEN",
        &[("rank", "1"), ("tier_code", "SILVER")],
    );
    let assign = |rid: &str, code: &str| gw::AssignTierRequest {
        request_id: rid.into(),
        customer_id: bob.clone(),
        tier_code: code.into(),
        reason: "test".into(),
        lock: false,
    };
    let r = w
        .customers
        .assign_tier(authed(assign("assign-nope", "NOPE"), &admin))
        .await;
    w.refused(
        "an unknown tier",
        r,
        Code::NotFound,
        "TIER_NOT_FOUND",
        &[("tier_code", "NOPE")],
    );
    w.customers
        .assign_tier(authed(assign("assign-silver", "SILVER"), &admin))
        .await
        .expect("assigned");
    let r = w
        .admin
        .delete_tier(authed(
            gw::DeleteTierRequest {
                request_id: "delete-silver".into(),
                code: "SILVER".into(),
            },
            &admin,
        ))
        .await;
    w.refused(
        "deleting an assigned tier",
        r,
        Code::FailedPrecondition,
        "TIER_IN_USE",
        &[("tier_code", "SILVER")],
    );

    // ---- points --------------------------------------------------------------------------------
    let adjust = |rid: &str, who: &str, amount: &str| gw::AdjustPointsRequest {
        request_id: rid.into(),
        customer_id: who.into(),
        amount: amount.into(),
        reason: "test".into(),
        ..Default::default()
    };
    let r = w
        .customers
        .adjust_points(authed(adjust("take", &bob, "-10"), &admin))
        .await;
    w.refused(
        "taking points a customer does not have",
        r,
        Code::FailedPrecondition,
        "INSUFFICIENT_POINTS",
        &[("available", "0"), ("requested", "10")],
    );
    w.customers
        .adjust_points(authed(adjust("give-alice", &alice, "100"), &admin))
        .await
        .expect("points given");
    w.customers
        .adjust_points(authed(adjust("give-bob", &bob, "10"), &admin))
        .await
        .expect("points given");
    let confirm =
        |rid: &str, receipt: &str, buyer: Option<Buyer>, redeem: &str| gw::ConfirmRequest {
            request_id: rid.into(),
            receipt_id: receipt.into(),
            buyer,
            lines: vec![line("a", "100", "1")],
            redeem_points: redeem.into(),
            ..Default::default()
        };
    let r = w
        .checkout
        .confirm(authed(confirm("c-anon", "r-anon", None, "10"), &till))
        .await;
    w.refused(
        "points on an anonymous receipt",
        r,
        Code::FailedPrecondition,
        "REDEMPTION_NOT_ALLOWED",
        &[],
    );
    let r = w
        .checkout
        .confirm(authed(
            confirm("c-bob", "r-bob", customer(&bob), "30"),
            &till,
        ))
        .await;
    w.refused(
        "30 points of 10",
        r,
        Code::FailedPrecondition,
        "INSUFFICIENT_POINTS",
        &[("available", "10"), ("requested", "30")],
    );
    let r = w
        .checkout
        .confirm(authed(
            confirm("c-alice", "r-alice", customer(&alice), "60"),
            &till,
        ))
        .await;
    w.refused(
        "60 points where half of 100 may be paid",
        r,
        Code::FailedPrecondition,
        "REDEMPTION_LIMIT_EXCEEDED",
        &[("max_redeemable", "50"), ("requested", "60")],
    );

    // ---- checkouts -----------------------------------------------------------------------------
    let r = w.checkout.get_checkout(authed(get(), &till)).await;
    w.refused(
        "an unknown receipt",
        r,
        Code::NotFound,
        "CHECKOUT_NOT_FOUND",
        &[],
    );
    w.checkout
        .confirm(authed(
            confirm("c-ok", "r-ok", customer(&alice), "10"),
            &till,
        ))
        .await
        .expect("confirmed");
    let r = w
        .checkout
        .cancel(authed(
            gw::CancelRequest {
                request_id: "cancel-ok".into(),
                receipt_id: "r-ok".into(),
                ..Default::default()
            },
            &till,
        ))
        .await;
    w.refused(
        "cancelling a confirmed receipt",
        r,
        Code::FailedPrecondition,
        "CHECKOUT_STATE_CONFLICT",
        &[
            ("state", "CHECKOUT_STATE_CONFIRMED"),
            ("receipt_id", "r-ok"),
        ],
    );
    let refund = |rid: &str, line_id: &str, quantity: &str| gw::RefundRequest {
        request_id: rid.into(),
        receipt_id: "r-ok".into(),
        refund_id: rid.into(),
        lines: vec![gw::RefundLine {
            line_id: line_id.into(),
            quantity: quantity.into(),
        }],
        ..Default::default()
    };
    let r = w
        .checkout
        .refund(authed(refund("refund-2", "a", "2"), &till))
        .await;
    w.refused(
        "refunding 2 of 1",
        r,
        Code::FailedPrecondition,
        "REFUND_EXCEEDS_RECEIPT",
        &[("line_id", "a"), ("remaining_quantity", "1")],
    );
    let r = w
        .checkout
        .refund(authed(refund("refund-zz", "zz", "1"), &till))
        .await;
    w.refused(
        "refunding a line not sold",
        r,
        Code::NotFound,
        "LINE_NOT_FOUND",
        &[("line_id", "zz")],
    );
    let old = gw::SubmitOfflineReceiptRequest {
        request_id: "offline-old".into(),
        receipt_id: "r-old".into(),
        lines: vec![line("a", "100", "1")],
        occurred_at: Some(timestamps::to_proto(Utc::now() - Duration::days(31))),
        ..Default::default()
    };
    let r = w.checkout.submit_offline_receipt(authed(old, &till)).await;
    w.refused(
        "an offline receipt of 31 days ago",
        r,
        Code::FailedPrecondition,
        "RECEIPT_TOO_OLD",
        &[("max_age", "PT720H")],
    );

    assert!(w.failures.is_empty(), "{}", w.failures.join("\n"));

    // ---- every reason is accounted for --------------------------------------------------------
    let excused: BTreeMap<&str, &str> = NOT_FROM_THE_GATEWAY.iter().copied().collect();
    let mut unaccounted = Vec::new();
    for value in 0..200 {
        let Ok(reason) = ErrorReason::try_from(value) else {
            continue;
        };
        let name = reason.as_str_name().trim_start_matches("ERROR_REASON_");
        let seen = w.seen.contains(name);
        assert!(
            !(seen && excused.contains_key(name)),
            "{name} is listed as unreachable but the walk returned it"
        );
        if !seen && !excused.contains_key(name) {
            unaccounted.push(name.to_owned());
        }
    }
    assert!(
        unaccounted.is_empty(),
        "reasons neither walked nor excused: {unaccounted:?}"
    );
    for reason in &w.seen {
        assert!(
            ErrorReason::from_str_name(&format!("ERROR_REASON_{reason}")).is_some(),
            "{reason} is not in errors.proto"
        );
    }
    suite.stop().await.unwrap();
}
