//! Money and time agree everywhere, through the gateway's own API on both engines: a store's
//! time zone wins over the program's for its receipts (Calculate, Confirm and PreviewProgram
//! alike), and a program whose points scale is not the merchant's ledger's is refused before it
//! can promise points that Confirm cannot book.

use crate::gateway_support::till_in_new_store;
use chrono::{Duration, Timelike, Utc};
use kopilka_proto::gateway::admin_service_client::AdminServiceClient;
use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::customer_service_client::CustomerServiceClient;
use kopilka_proto::gateway::{self as gw, buyer::Who, program_choice, Buyer};
use kopilka_proto::types::BasketLine;
use kopilka_runtime::status::{field_violations_of, reason_of};
use kopilka_tests::{authed, on_both_backends, TestSuite};
use tonic::Code;

on_both_backends!(
    a_stores_time_zone_wins_over_the_programs,
    a_program_on_another_points_scale_is_refused
);

/// Happy hours from `start` to `end` local time, every day, in a program set in Yekaterinburg
/// (UTC+5).
fn happy_hours(start: &str, end: &str) -> String {
    format!(
        r#"name: happy hours
settings: {{currency: RUB, time_zone: Asia/Yekaterinburg}}
rules:
  - id: happy-hours
    name: 10 % off in happy hours
    when:
      time_windows:
        - weekdays: [WEEKDAY_MONDAY, WEEKDAY_TUESDAY, WEEKDAY_WEDNESDAY, WEEKDAY_THURSDAY, WEEKDAY_FRIDAY, WEEKDAY_SATURDAY, WEEKDAY_SUNDAY]
          start: "{start}"
          end: "{end}"
    discount_percent: {{percent: "10"}}
"#
    )
}

fn one_line() -> Vec<BasketLine> {
    vec![BasketLine {
        line_id: "1".into(),
        product_id: "coffee".into(),
        unit_price: "1000.00".into(),
        quantity: "1".into(),
        ..Default::default()
    }]
}

fn discount(totals: Option<&kopilka_proto::rules::ReceiptTotals>) -> String {
    totals.map(|t| t.discount.clone()).unwrap_or_default()
}

fn is_zero(amount: &str) -> bool {
    amount.is_empty() || amount.trim_start_matches(['0', '.']).is_empty()
}

async fn a_stores_time_zone_wins_over_the_programs(suite: TestSuite) {
    let m = suite.seed_merchant("tz").await;
    let channel = suite.channel(suite.addrs.gateway);
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut checkout = CheckoutServiceClient::new(channel.clone());
    let mut customers = CustomerServiceClient::new(channel);
    let boss = m.admin_key.clone();
    // Happy hours from an hour before to an hour after Moscow's (UTC+3) wall clock now: now is
    // inside them in Moscow, and outside them in Yekaterinburg, two hours ahead. (Receipts are
    // rung up now: a sale time before the program's activation has no program.)
    let moscow_now = Utc::now() + Duration::hours(3);
    let hhmm = |t: chrono::DateTime<Utc>| format!("{:02}:{:02}", t.hour(), t.minute());
    let program = rules_svc::document::from_yaml(&happy_hours(
        &hhmm(moscow_now - Duration::hours(1)),
        &hhmm(moscow_now + Duration::hours(1)),
    ))
    .unwrap();
    admin
        .apply_program(authed(
            gw::ApplyProgramRequest {
                request_id: "apply".into(),
                program: Some(program.clone()),
                ..Default::default()
            },
            &boss,
        ))
        .await
        .expect("the program applied");
    let moscow = till_in_new_store(&mut admin, &boss, "msk", "Moscow", "Europe/Moscow").await;
    let key = moscow.key.clone();

    // Discounts are for members: a registered customer buys.
    let ivan = customers
        .register_customer(authed(
            gw::RegisterCustomerRequest {
                request_id: "reg-ivan".into(),
                phone: "+7 912 600-00-01".into(),
                ..Default::default()
            },
            &boss,
        ))
        .await
        .expect("registered")
        .into_inner()
        .customer
        .unwrap()
        .customer_id;
    let buyer = Some(Buyer {
        who: Some(Who::CustomerId(ivan)),
    });
    let calculate = |receipt_id: &str| gw::CalculateRequest {
        receipt_id: receipt_id.into(),
        lines: one_line(),
        buyer: buyer.clone(),
        ..Default::default()
    };
    let at_moscow = checkout
        .calculate(authed(calculate("r-msk"), &key))
        .await
        .expect("Calculate at the Moscow till")
        .into_inner()
        .calculation
        .unwrap();
    assert_eq!(
        discount(at_moscow.totals.as_ref()),
        "100.00",
        "now is happy hours in Moscow: {at_moscow:?}"
    );
    // The seeded store has no time zone of its own: the program's zone applies.
    let elsewhere = checkout
        .calculate(authed(calculate("r-seed"), &m.terminal_key))
        .await
        .expect("Calculate at the seeded till")
        .into_inner()
        .calculation
        .unwrap();
    assert!(
        is_zero(&discount(elsewhere.totals.as_ref())),
        "now is not happy hours in Yekaterinburg: {elsewhere:?}"
    );
    // Confirm books what Calculate promised.
    let confirmed = checkout
        .confirm(authed(
            gw::ConfirmRequest {
                request_id: "confirm-msk".into(),
                receipt_id: "r-msk".into(),
                buyer: buyer.clone(),
                lines: one_line(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .expect("Confirm at the Moscow till")
        .into_inner();
    let calculation = confirmed.checkout.unwrap().calculation.unwrap();
    assert_eq!(discount(calculation.totals.as_ref()), "100.00");

    // PreviewProgram (anonymous, so without discounts) evaluates in the same zone: the named
    // store's, else the program's (not the merchant's, which is Europe/Moscow here).
    let preview = |store_id: &str| gw::PreviewProgramRequest {
        program: Some(gw::ProgramChoice {
            choice: Some(program_choice::Choice::Program(program.clone())),
        }),
        lines: one_line(),
        store_id: store_id.into(),
        ..Default::default()
    };
    let in_moscow = admin
        .preview_program(authed(preview(&moscow.store_id), &boss))
        .await
        .expect("PreviewProgram for the Moscow store")
        .into_inner()
        .result
        .unwrap();
    assert_eq!(in_moscow.time_zone, "Europe/Moscow");
    let no_store = admin
        .preview_program(authed(preview(""), &boss))
        .await
        .expect("PreviewProgram without a store")
        .into_inner()
        .result
        .unwrap();
    assert_eq!(no_store.time_zone, "Asia/Yekaterinburg");
    suite.stop().await.unwrap();
}

async fn a_program_on_another_points_scale_is_refused(suite: TestSuite) {
    let m = suite.seed_merchant("scale").await;
    let mut admin = AdminServiceClient::new(suite.channel(suite.addrs.gateway));
    let boss = m.admin_key.clone();
    // The merchant's ledger keeps whole points (points_scale 0, the default).
    let cents = rules_svc::document::from_yaml(
        r#"name: cents
settings: {currency: RUB, time_zone: Europe/Moscow, points_scale: 2}
rules:
  - id: flat
    name: flat 0.247 %
    accrue_percent: {percent: "0.247"}
"#,
    )
    .unwrap();
    let err = admin
        .apply_program(authed(
            gw::ApplyProgramRequest {
                request_id: "apply-cents".into(),
                program: Some(cents.clone()),
                ..Default::default()
            },
            &boss,
        ))
        .await
        .expect_err("a program on points scale 2 for a ledger on 0");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("PROGRAM_INVALID"),
        "{err:?}"
    );
    let fields: Vec<String> = field_violations_of(&err)
        .into_iter()
        .map(|(field, _)| field)
        .collect();
    assert_eq!(fields, ["settings.points_scale"], "{err:?}");
    // Nothing was activated.
    let active = admin
        .get_active_program(authed(gw::GetActiveProgramRequest::default(), &boss))
        .await
        .map(|r| r.into_inner().version);
    assert!(
        !matches!(active, Ok(Some(_))),
        "no program is active: {active:?}"
    );
    // ValidateProgram says so too.
    let checked = admin
        .validate_program(authed(
            gw::ValidateProgramRequest {
                source: Some(gw::validate_program_request::Source::Program(cents.clone())),
            },
            &boss,
        ))
        .await
        .expect("ValidateProgram")
        .into_inner();
    assert!(!checked.valid);
    assert!(
        checked
            .violations
            .iter()
            .any(|v| v.field == "settings.points_scale"),
        "{checked:?}"
    );
    // A draft on that scale is refused at publication the same way.
    let draft = admin
        .create_program_draft(authed(
            gw::CreateProgramDraftRequest {
                request_id: "draft-cents".into(),
                source: Some(gw::create_program_draft_request::Source::Program(
                    cents.clone(),
                )),
                comment: String::new(),
            },
            &boss,
        ))
        .await
        .expect("a draft is only a draft")
        .into_inner()
        .version
        .unwrap();
    let err = admin
        .publish_program(authed(
            gw::PublishProgramRequest {
                request_id: "publish-cents".into(),
                version: draft.version,
                etag: String::new(),
            },
            &boss,
        ))
        .await
        .expect_err("publishing a draft on points scale 2");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("PROGRAM_INVALID"),
        "{err:?}"
    );
    let fields: Vec<String> = field_violations_of(&err)
        .into_iter()
        .map(|(field, _)| field)
        .collect();
    assert_eq!(fields, ["settings.points_scale"], "{err:?}");
    // On the merchant's scale the same program applies.
    let mut whole = cents;
    whole.settings.as_mut().unwrap().points_scale = 0;
    admin
        .apply_program(authed(
            gw::ApplyProgramRequest {
                request_id: "apply-whole".into(),
                program: Some(whole),
                ..Default::default()
            },
            &boss,
        ))
        .await
        .expect("a program on the ledger's points scale applies");
    suite.stop().await.unwrap();
}
