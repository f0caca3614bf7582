//! A terminal key can do only what a cashier does, through the gateway on both engines: record
//! the actions a cashier witnesses (at most once per customer, rule and day, whatever reference
//! it invents), attach the first card of a customer but no further ones, see its own store's
//! receipts only, and not read a customer's points history across the chain. Admin keys keep
//! all of it.

use kopilka_proto::gateway::admin_service_client::AdminServiceClient;
use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::customer_service_client::CustomerServiceClient;
use kopilka_proto::gateway::{self as gw, buyer::Who, Buyer};
use kopilka_proto::types::{ActionKind, BasketLine, IdentifierInput, IdentifierKind};
use kopilka_runtime::status::reason_of;
use kopilka_tests::{authed, on_both_backends, TestSuite};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::cards_support::with_ean13;
use crate::gateway_support::till_in_new_store;

on_both_backends!(a_terminal_key_does_what_a_cashier_does);

const PROGRAM: &str = r#"name: scope
settings: {currency: RUB, time_zone: Europe/Moscow}
rules:
  - id: flat
    name: flat 5 %
    accrue_percent: {percent: "5"}
  - id: survey
    name: a survey is worth 10
    action_reward: {action: ACTION_KIND_SURVEY, points: "10"}
  - id: subscribe
    name: subscribing is worth 20
    action_reward: {action: ACTION_KIND_SUBSCRIPTION, points: "20"}
"#;

fn scope_denied<T: std::fmt::Debug>(what: &str, result: Result<tonic::Response<T>, Status>) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "PERMISSION_DENIED_KEY_SCOPE", "{what}");
    assert_eq!(info.metadata["scope"], "KEY_SCOPE_TERMINAL", "{what}");
    assert_eq!(info.metadata["required_scope"], "KEY_SCOPE_ADMIN", "{what}");
}

fn ean(raw: &str) -> IdentifierInput {
    IdentifierInput {
        raw: raw.into(),
        kind_hint: IdentifierKind::BarcodeEan13 as i32,
    }
}

async fn a_terminal_key_does_what_a_cashier_does(suite: TestSuite) {
    let m = suite.seed_merchant("scope").await;
    let channel = suite.channel(suite.addrs.gateway);
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut checkout = CheckoutServiceClient::new(channel.clone());
    let mut customers = CustomerServiceClient::new(channel);
    let (till, boss) = (m.terminal_key.clone(), m.admin_key.clone());
    admin
        .apply_program(authed(
            gw::ApplyProgramRequest {
                request_id: "apply".into(),
                program: Some(rules_svc::document::from_yaml(PROGRAM).unwrap()),
                ..Default::default()
            },
            &boss,
        ))
        .await
        .expect("the program applied");
    let ivan = customers
        .register_customer(authed(
            gw::RegisterCustomerRequest {
                request_id: "reg-ivan".into(),
                phone: "+7 912 500-00-01".into(),
                ..Default::default()
            },
            &till,
        ))
        .await
        .expect("registered")
        .into_inner()
        .customer
        .unwrap()
        .customer_id;

    // ---- actions -------------------------------------------------------------------------------
    let action = |rid: &str, kind: ActionKind, action_ref: &str| gw::RecordActionRequest {
        request_id: rid.into(),
        customer: Some(gw::record_action_request::Customer::CustomerId(
            ivan.clone(),
        )),
        action: kind as i32,
        action_ref: action_ref.into(),
        ..Default::default()
    };
    let first = customers
        .record_action(authed(action("a-1", ActionKind::Survey, "survey-1"), &till))
        .await
        .expect("a survey at the till")
        .into_inner();
    assert!(!first.already_granted);
    assert_eq!(first.award.unwrap().points, "10");
    // Inventing another reference the same day earns nothing more.
    let second = customers
        .record_action(authed(action("a-2", ActionKind::Survey, "survey-2"), &till))
        .await
        .expect("a second survey at the till")
        .into_inner();
    assert!(second.already_granted, "{second:?}");
    assert_eq!(second.award.unwrap().points, "0");
    // An admin key records each occurrence by its reference.
    let office = customers
        .record_action(authed(action("a-3", ActionKind::Survey, "survey-3"), &boss))
        .await
        .expect("a survey from the office")
        .into_inner();
    assert!(!office.already_granted);
    assert_eq!(office.award.unwrap().points, "10");
    // Subscribing comes with the consent, not with a cashier's word; the rest is for admins.
    for kind in [ActionKind::Subscription, ActionKind::ProfileCompleted] {
        scope_denied(
            kind.as_str_name(),
            customers
                .record_action(authed(action("a-x", kind, "x"), &till))
                .await,
        );
    }
    let balance = customers
        .get_balance(authed(
            gw::GetBalanceRequest {
                customer: Some(gw::get_balance_request::Customer::CustomerId(ivan.clone())),
            },
            &till,
        ))
        .await
        .expect("a balance")
        .into_inner()
        .balance
        .unwrap();
    assert_eq!(balance.available, "20", "two surveys of 10, nothing else");

    // ---- cards ---------------------------------------------------------------------------------
    let attach = |rid: &str, card: &str| gw::AttachCardRequest {
        request_id: rid.into(),
        customer_id: ivan.clone(),
        card: Some(ean(card)),
    };
    let (first_card, second_card) = (with_ean13("460000000201"), with_ean13("460000000202"));
    customers
        .attach_card(authed(attach("card-1", &first_card), &till))
        .await
        .expect("the first card at the till");
    scope_denied(
        "a second card at the till",
        customers
            .attach_card(authed(attach("card-2", &second_card), &till))
            .await,
    );
    customers
        .attach_card(authed(attach("card-2-office", &second_card), &boss))
        .await
        .expect("a second card from the office");
    // Two registers issuing a first card to one customer at once: exactly one is attached.
    let petr = customers
        .register_customer(authed(
            gw::RegisterCustomerRequest {
                request_id: "reg-petr".into(),
                phone: "+7 912 500-00-02".into(),
                ..Default::default()
            },
            &till,
        ))
        .await
        .expect("registered")
        .into_inner()
        .customer
        .unwrap()
        .customer_id;
    let mut racers = tokio::task::JoinSet::new();
    for (rid, card) in [("race-1", "460000000203"), ("race-2", "460000000204")] {
        let mut customers = customers.clone();
        let request = authed(
            gw::AttachCardRequest {
                request_id: rid.into(),
                customer_id: petr.clone(),
                card: Some(ean(&with_ean13(card))),
            },
            &till,
        );
        racers.spawn(async move { customers.attach_card(request).await });
    }
    let results = racers.join_all().await;
    let attached = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(attached, 1, "{results:?}");
    for refused in results.into_iter().filter(|r| r.is_err()) {
        scope_denied("the other first card", refused);
    }

    // ---- reading -------------------------------------------------------------------------------
    let history = || gw::ListHistoryRequest {
        customer_id: ivan.clone(),
        ..Default::default()
    };
    scope_denied(
        "the chain-wide history at the till",
        customers.list_history(authed(history(), &till)).await,
    );
    let entries = customers
        .list_history(authed(history(), &boss))
        .await
        .expect("the history from the office")
        .into_inner()
        .transactions;
    assert_eq!(entries.len(), 2, "two survey awards: {entries:?}");

    // A receipt at the first store is not shown to a till of another store.
    let other_till = till_in_new_store(&mut admin, &boss, "second", "Second", "Europe/Moscow")
        .await
        .key;
    checkout
        .confirm(authed(
            gw::ConfirmRequest {
                request_id: "c-1".into(),
                receipt_id: "r-1".into(),
                buyer: Some(Buyer {
                    who: Some(Who::CustomerId(ivan.clone())),
                }),
                lines: vec![BasketLine {
                    line_id: "1".into(),
                    product_id: "coffee".into(),
                    unit_price: "200".into(),
                    quantity: "1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &till,
        ))
        .await
        .expect("a purchase at the first store");
    let purchases = |key: &str| {
        let mut customers = customers.clone();
        let request = authed(
            gw::ListPurchasesRequest {
                customer_id: ivan.clone(),
                ..Default::default()
            },
            key,
        );
        async move {
            customers
                .list_purchases(request)
                .await
                .expect("purchases")
                .into_inner()
                .receipts
                .len()
        }
    };
    assert_eq!(purchases(&till).await, 1, "its own store's receipt");
    assert_eq!(
        purchases(&other_till).await,
        0,
        "another store's receipts stay hidden"
    );
    assert_eq!(purchases(&boss).await, 1);
    let status = customers
        .list_history(authed(history(), &other_till))
        .await
        .expect_err("no history at any till");
    assert_eq!(
        reason_of(&status).as_deref(),
        Some("PERMISSION_DENIED_KEY_SCOPE")
    );
    suite.stop().await.unwrap();
}
