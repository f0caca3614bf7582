//! Every reason rules-svc returns carries the ErrorInfo metadata errors.proto documents for it,
//! produced by the real operations on an in-memory SQLite database and turned into a status
//! the way the handlers do.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use kopilka_proto::cards::tier_service_client::TierServiceClient;
use kopilka_proto::rules::evaluation_service_server::EvaluationService;
use kopilka_proto::rules::{self as pb, program_ref::Source, Program, ProgramRef};
use kopilka_proto::types::{ActionKind, BasketLine};
use kopilka_runtime::service_auth::{self, ServiceToken};
use kopilka_runtime::Db;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::cache::{CacheSettings, ProgramCache};
use crate::document::from_yaml;
use crate::evaluation_api::EvaluationApi;
use crate::programs::Programs;
use crate::store::Store;

const M: &str = "m1";

type Info = (Code, String, HashMap<String, String>);

async fn store() -> Store {
    // One connection: every connection to `sqlite::memory:` is a database of its own.
    let db = Db::connect("sqlite::memory:", 1, crate::MIGRATIONS)
        .await
        .unwrap();
    Store::new(db)
}

fn programs_on(
    store: Store,
    cards: Option<TierServiceClient<service_auth::ServiceChannel>>,
) -> Programs {
    let cache = ProgramCache::new(store.clone(), CacheSettings::default());
    Programs::new(store, cache, cards)
}

async fn programs() -> Programs {
    programs_on(store().await, None)
}

/// The code, ErrorInfo reason and metadata of the status `result`'s error becomes.
fn refused<T: std::fmt::Debug, E: Into<Status>>(result: Result<T, E>) -> Info {
    let status: Status = result.expect_err("a refusal").into();
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.domain, "kopilka");
    (status.code(), info.reason, info.metadata)
}

fn expect(code: Code, reason: &str, metadata: &[(&str, &str)]) -> Info {
    let metadata = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (code, reason.to_owned(), metadata)
}

fn limit(field: &str, limit: &str) -> Info {
    expect(
        Code::InvalidArgument,
        "LIMIT_EXCEEDED",
        &[("field", field), ("limit", limit)],
    )
}

fn violations<T: std::fmt::Debug, E: Into<Status>>(result: Result<T, E>) -> Vec<(String, String)> {
    kopilka_runtime::status::field_violations_of(&result.expect_err("a refusal").into())
}

const HEAD: &str = "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow, max_redeem_share_percent: \"50\"}\n";

fn program() -> Program {
    from_yaml(&format!(
        "{HEAD}rules:\n  - id: visit\n    name: at most 300 per visit\n    redemption_limit: {{max_points: \"300\"}}\n  - id: back\n    name: 5 % back\n    accrue_percent: {{percent: \"5\"}}\n"
    ))
    .unwrap()
}

/// A program with one ERROR finding (a discount above 100 %).
fn invalid_program() -> Program {
    from_yaml(&format!(
        "{HEAD}rules:\n  - {{id: a, name: A, discount_percent: {{percent: \"150\"}}}}\n"
    ))
    .unwrap()
}

fn draft_request(request_id: &str, program: Program) -> pb::CreateDraftRequest {
    pb::CreateDraftRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        source: Some(pb::create_draft_request::Source::Program(program)),
        ..Default::default()
    }
}

async fn draft(p: &Programs, request_id: &str, program: Program) -> u64 {
    p.create_draft(&draft_request(request_id, program))
        .await
        .unwrap()
        .version
        .unwrap()
        .version
}

fn publish_request(request_id: &str, version: u64) -> pb::PublishVersionRequest {
    pb::PublishVersionRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        version,
        ..Default::default()
    }
}

fn activate_request(request_id: &str, version: u64) -> pb::ActivateVersionRequest {
    pb::ActivateVersionRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        version,
        ..Default::default()
    }
}

fn get_version(version: u64) -> pb::GetVersionRequest {
    pb::GetVersionRequest {
        merchant_id: M.to_owned(),
        version,
    }
}

fn category(id: &str, name: &str) -> pb::Category {
    pb::Category {
        category_id: id.to_owned(),
        name: name.to_owned(),
        parent_id: String::new(),
    }
}

#[tokio::test]
async fn program_service_refusals_carry_their_metadata() {
    let p = programs().await;
    // Before anything is activated.
    let no_active = p
        .get_active_version(&pb::GetActiveVersionRequest {
            merchant_id: M.to_owned(),
            ..Default::default()
        })
        .await;
    let v1 = draft(&p, "create-1", program()).await;
    p.publish_version(&publish_request("publish-1", v1))
        .await
        .unwrap();
    let v2 = draft(&p, "create-2", program()).await;
    let bad = draft(&p, "create-bad", invalid_program()).await;
    assert_eq!((v1, v2, bad), (1, 2, 3));

    let update = |request_id: &str, version: u64, etag: &str| pb::UpdateDraftRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        version,
        program: Some(program()),
        etag: etag.to_owned(),
        comment: String::new(),
    };
    let list_versions = |page_size: i32, page_token: &str| pb::ListVersionsRequest {
        merchant_id: M.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
        ..Default::default()
    };
    let list_categories = |page_size: i32| pb::ListCategoriesRequest {
        merchant_id: M.to_owned(),
        page_size,
        ..Default::default()
    };
    let upsert = |categories: Vec<pb::Category>| pb::UpsertCategoriesRequest {
        merchant_id: M.to_owned(),
        request_id: "upsert".to_owned(),
        categories,
    };
    let mut long_comment = draft_request("create-long", program());
    long_comment.comment = "x".repeat(2001);
    let mut long_merchant = get_version(1);
    long_merchant.merchant_id = "m".repeat(129);
    let many: Vec<pb::Category> = (0..1001).map(|i| category(&format!("c{i}"), "C")).collect();

    let cases: Vec<(&str, Info, Info)> = vec![
        (
            "an unknown version",
            refused(p.get_version(&get_version(99)).await),
            expect(Code::NotFound, "VERSION_NOT_FOUND", &[("version", "99")]),
        ),
        (
            "a copy of an unknown version",
            refused(
                p.create_draft(&pb::CreateDraftRequest {
                    source: Some(pb::create_draft_request::Source::CopyOfVersion(42)),
                    ..draft_request("copy-42", program())
                })
                .await,
            ),
            expect(Code::NotFound, "VERSION_NOT_FOUND", &[("version", "42")]),
        ),
        (
            "publishing an unknown version",
            refused(p.publish_version(&publish_request("publish-7", 7)).await),
            expect(Code::NotFound, "VERSION_NOT_FOUND", &[("version", "7")]),
        ),
        (
            "updating a published version",
            refused(p.update_draft(&update("update-1", v1, "")).await),
            expect(
                Code::FailedPrecondition,
                "VERSION_IMMUTABLE",
                &[("version", "1")],
            ),
        ),
        (
            "deleting a published version",
            refused(
                p.delete_draft(&pb::DeleteDraftRequest {
                    merchant_id: M.to_owned(),
                    request_id: "delete-1".to_owned(),
                    version: v1,
                })
                .await,
            ),
            expect(
                Code::FailedPrecondition,
                "VERSION_IMMUTABLE",
                &[("version", "1")],
            ),
        ),
        (
            "a stale etag",
            refused(p.update_draft(&update("update-2", v2, "stale")).await),
            expect(
                Code::Aborted,
                "CONCURRENT_MODIFICATION",
                &[("version", "2")],
            ),
        ),
        (
            "activating a draft",
            refused(
                p.activate_version(&activate_request("activate-2", v2))
                    .await,
            ),
            expect(
                Code::FailedPrecondition,
                "PROGRAM_NOT_PUBLISHED",
                &[("version", "2")],
            ),
        ),
        (
            "nothing active",
            refused(no_active),
            expect(Code::FailedPrecondition, "NO_ACTIVE_PROGRAM", &[]),
        ),
        (
            "an unknown activation",
            refused(
                p.cancel_activation(&pb::CancelActivationRequest {
                    merchant_id: M.to_owned(),
                    request_id: "cancel".to_owned(),
                    activation_id: "nope".to_owned(),
                })
                .await,
            ),
            expect(Code::NotFound, "ACTIVATION_NOT_FOUND", &[]),
        ),
        (
            "a request id reused for another payload",
            refused(
                p.create_draft(&pb::CreateDraftRequest {
                    comment: "another payload".to_owned(),
                    ..draft_request("create-1", program())
                })
                .await,
            ),
            expect(
                Code::FailedPrecondition,
                "IDEMPOTENCY_KEY_REUSED",
                &[("request_id", "create-1")],
            ),
        ),
        (
            "a request id reused for another operation",
            refused(p.publish_version(&publish_request("create-2", v2)).await),
            expect(
                Code::FailedPrecondition,
                "IDEMPOTENCY_KEY_REUSED",
                &[("request_id", "create-2")],
            ),
        ),
        (
            "publishing an invalid program",
            refused(
                p.publish_version(&publish_request("publish-bad", bad))
                    .await,
            ),
            expect(Code::InvalidArgument, "PROGRAM_INVALID", &[]),
        ),
        (
            "a page token this service did not issue",
            refused(p.list_versions(&list_versions(0, "garbage")).await),
            expect(Code::InvalidArgument, "PAGE_TOKEN_INVALID", &[]),
        ),
        (
            "a bad version number",
            refused(p.get_version(&get_version(0)).await),
            expect(Code::InvalidArgument, "VALIDATION_FAILED", &[]),
        ),
        (
            "a negative page size",
            refused(p.list_versions(&list_versions(-1, "")).await),
            expect(Code::InvalidArgument, "VALIDATION_FAILED", &[]),
        ),
        (
            "too many versions per page",
            refused(p.list_versions(&list_versions(101, "")).await),
            limit("page_size", "100"),
        ),
        (
            "too many categories per page",
            refused(p.list_categories(&list_categories(1001)).await),
            limit("page_size", "1000"),
        ),
        (
            "a long comment",
            refused(p.create_draft(&long_comment).await),
            limit("comment", "2000"),
        ),
        (
            "a long merchant id",
            refused(p.get_version(&long_merchant).await),
            limit("merchant_id", "128"),
        ),
        (
            "too many categories per upsert",
            refused(p.upsert_categories(&upsert(many)).await),
            limit("categories", "1000"),
        ),
        (
            "a long category name",
            refused(
                p.upsert_categories(&upsert(vec![category("c", &"n".repeat(257))]))
                    .await,
            ),
            limit("categories[0].name", "256"),
        ),
        (
            "a long category id",
            refused(
                p.upsert_categories(&upsert(vec![category(&"c".repeat(65), "C")]))
                    .await,
            ),
            limit("categories[0].category_id", "64"),
        ),
        (
            "too many categories per delete",
            refused(
                p.delete_categories(&pb::DeleteCategoriesRequest {
                    merchant_id: M.to_owned(),
                    request_id: "delete-categories".to_owned(),
                    category_ids: (0..1001).map(|i| format!("c{i}")).collect(),
                })
                .await,
            ),
            limit("category_ids", "1000"),
        ),
        (
            "a long tier code",
            refused(
                p.validate_program(&pb::ValidateProgramRequest {
                    merchant_id: M.to_owned(),
                    source: Some(pb::validate_program_request::Source::Version(v2)),
                    tier_codes: vec!["T".repeat(33)],
                })
                .await,
            ),
            limit("tier_codes[0]", "32"),
        ),
    ];
    for (case, got, want) in cases {
        assert_eq!(got, want, "{case}");
    }
}

#[tokio::test]
async fn program_invalid_keeps_one_field_violation_per_error() {
    let p = programs().await;
    let bad = draft(&p, "create-bad", invalid_program()).await;
    let got = violations(
        p.publish_version(&publish_request("publish-bad", bad))
            .await,
    );
    let report = crate::validate::validate(&invalid_program(), &Default::default());
    let want: Vec<(String, String)> = report
        .violations
        .iter()
        .filter(|v| v.severity() != pb::ViolationSeverity::Warning)
        .map(|v| (v.field.clone(), format!("{}: {}", v.code, v.description)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "rules[0].discount_percent.percent");
    assert!(got[0].1.starts_with("OUT_OF_RANGE: "), "{got:?}");
}

fn line(id: &str, price: &str, quantity: &str) -> BasketLine {
    BasketLine {
        line_id: id.to_owned(),
        product_id: format!("p{id}"),
        unit_price: price.to_owned(),
        quantity: quantity.to_owned(),
        ..Default::default()
    }
}

fn customer(available: &str) -> pb::CustomerContext {
    pb::CustomerContext {
        customer_id: "c1".to_owned(),
        available_points: available.to_owned(),
        ..Default::default()
    }
}

fn basket(lines: Vec<BasketLine>) -> pb::EvaluationInput {
    pb::EvaluationInput {
        lines,
        customer: Some(customer("100000")),
        ..Default::default()
    }
}

fn evaluate(
    merchant: &str,
    program: Option<Source>,
    input: pb::EvaluationInput,
) -> Request<pb::EvaluateRequest> {
    Request::new(pb::EvaluateRequest {
        merchant_id: merchant.to_owned(),
        program: program.map(|s| ProgramRef { source: Some(s) }),
        input: Some(input),
    })
}

#[tokio::test]
async fn evaluation_refusals_carry_their_metadata() {
    let p = programs().await;
    let v1 = draft(&p, "create-1", program()).await;
    p.publish_version(&publish_request("publish-1", v1))
        .await
        .unwrap();
    p.activate_version(&activate_request("activate-1", v1))
        .await
        .unwrap();
    let v2 = draft(&p, "create-2", program()).await;
    let api = EvaluationApi::new(p.clone());
    let two = || vec![line("1", "400", "1"), line("2", "400", "1")];

    let mut too_much = basket(two());
    too_much.redeem_points = "301".to_owned();
    let mut poor = basket(two());
    poor.customer = Some(customer("100"));
    poor.redeem_points = "150".to_owned();
    let mut future = basket(two());
    future.occurred_at = Some(kopilka_runtime::timestamps::to_proto(
        Utc::now() + chrono::Duration::minutes(6),
    ));
    let mut codes = basket(two());
    codes.promo_codes = (0..11).map(|i| format!("CODE{i}")).collect();
    let mut categories = basket(two());
    categories.lines[0].category_ids = (0..17).map(|i| format!("c{i}")).collect();
    let mut anonymous = basket(two());
    anonymous.customer = None;
    anonymous.redeem_points = "1".to_owned();

    let cases: Vec<(&str, Info, Info)> = vec![
        (
            "no program active for the merchant",
            refused(api.evaluate(evaluate("m2", None, basket(two()))).await),
            expect(Code::FailedPrecondition, "NO_ACTIVE_PROGRAM", &[]),
        ),
        (
            "an unknown version",
            refused(
                api.evaluate(evaluate(M, Some(Source::Version(99)), basket(two())))
                    .await,
            ),
            expect(Code::NotFound, "VERSION_NOT_FOUND", &[("version", "99")]),
        ),
        (
            "a draft at checkout",
            refused(
                api.evaluate(evaluate(M, Some(Source::Version(v2)), basket(two())))
                    .await,
            ),
            expect(
                Code::FailedPrecondition,
                "PROGRAM_NOT_PUBLISHED",
                &[("version", "2")],
            ),
        ),
        (
            "more points than the receipt allows",
            refused(api.evaluate(evaluate(M, None, too_much)).await),
            expect(
                Code::FailedPrecondition,
                "REDEMPTION_LIMIT_EXCEEDED",
                &[("max_redeemable", "300"), ("requested", "301")],
            ),
        ),
        (
            "more points than the customer has",
            refused(api.evaluate(evaluate(M, None, poor)).await),
            expect(
                Code::FailedPrecondition,
                "INSUFFICIENT_POINTS",
                &[("available", "100"), ("requested", "150")],
            ),
        ),
        (
            "a bad basket",
            refused(
                api.evaluate(evaluate(M, None, basket(vec![line("1", "10.001", "0")])))
                    .await,
            ),
            expect(Code::InvalidArgument, "BASKET_INVALID", &[]),
        ),
        (
            "an anonymous receipt paid with points",
            refused(api.evaluate(evaluate(M, None, anonymous)).await),
            expect(Code::InvalidArgument, "BASKET_INVALID", &[]),
        ),
        (
            "501 lines",
            refused(
                api.evaluate(evaluate(
                    M,
                    None,
                    basket((0..501).map(|i| line(&i.to_string(), "1", "1")).collect()),
                ))
                .await,
            ),
            limit("input.lines", "500"),
        ),
        (
            "11 promo codes",
            refused(api.evaluate(evaluate(M, None, codes)).await),
            limit("input.promo_codes", "10"),
        ),
        (
            "17 categories on a line",
            refused(api.evaluate(evaluate(M, None, categories)).await),
            limit("input.lines[0].category_ids", "16"),
        ),
        (
            "a long line id",
            refused(
                api.evaluate(evaluate(
                    M,
                    None,
                    basket(vec![line(&"l".repeat(65), "1", "1")]),
                ))
                .await,
            ),
            limit("input.lines[0].line_id", "64"),
        ),
        (
            "a sale 6 minutes ahead",
            refused(api.evaluate(evaluate(M, None, future)).await),
            expect(
                Code::InvalidArgument,
                "TIMESTAMP_IN_FUTURE",
                &[("field", "input.occurred_at")],
            ),
        ),
        (
            "an inline program at checkout",
            refused(
                api.evaluate(evaluate(M, Some(Source::Inline(program())), basket(two())))
                    .await,
            ),
            expect(Code::InvalidArgument, "VALIDATION_FAILED", &[]),
        ),
        (
            "comparing with an invalid candidate",
            refused(
                api.compare_versions(Request::new(pb::CompareVersionsRequest {
                    merchant_id: M.to_owned(),
                    base: None,
                    candidate: Some(ProgramRef {
                        source: Some(Source::Inline(invalid_program())),
                    }),
                    input: Some(basket(two())),
                }))
                .await,
            ),
            expect(Code::InvalidArgument, "PROGRAM_INVALID", &[]),
        ),
        (
            "a long action_ref",
            refused(
                api.evaluate_action(Request::new(pb::EvaluateActionRequest {
                    merchant_id: M.to_owned(),
                    customer: Some(customer("0")),
                    action: ActionKind::Review as i32,
                    action_ref: "r".repeat(65),
                    ..Default::default()
                }))
                .await,
            ),
            limit("action_ref", "64"),
        ),
        (
            "a tier decision without a trigger",
            refused(
                api.decide_tier(Request::new(pb::DecideTierRequest {
                    merchant_id: M.to_owned(),
                    customer: Some(customer("0")),
                    ..Default::default()
                }))
                .await,
            ),
            expect(Code::InvalidArgument, "VALIDATION_FAILED", &[]),
        ),
    ];
    for (case, got, want) in cases {
        assert_eq!(got, want, "{case}");
    }

    // The basket's field violations are as before: the paths rules-svc names.
    assert_eq!(
        violations(
            api.evaluate(evaluate(
                M,
                None,
                basket(vec![line("1", "10.001", "1"), line("1", "5", "0")])
            ))
            .await
        )
        .into_iter()
        .map(|(f, _)| f)
        .collect::<Vec<_>>(),
        [
            "input.lines[0].unit_price",
            "input.lines[1].line_id",
            "input.lines[1].quantity"
        ]
    );
    assert_eq!(
        violations(
            api.evaluate(evaluate(
                M,
                None,
                basket((0..501).map(|i| line(&i.to_string(), "1", "1")).collect()),
            ))
            .await
        ),
        [("input.lines".to_owned(), "at most 500 lines".to_owned())]
    );
}

#[tokio::test]
async fn unavailable_dependencies_are_named() {
    // cards-svc is not answering (nothing listens on port 1): tier codes cannot be checked.
    let token = ServiceToken::new(&ServiceToken::generate()).unwrap();
    let cards = TierServiceClient::new(
        service_auth::channel(
            "http://127.0.0.1:1",
            token,
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let p = programs_on(store().await, Some(cards));
    let validate = p
        .validate_program(&pb::ValidateProgramRequest {
            merchant_id: M.to_owned(),
            source: Some(pb::validate_program_request::Source::Program(program())),
            tier_codes: vec![],
        })
        .await;
    assert_eq!(
        refused(validate),
        expect(
            Code::Unavailable,
            "DEPENDENCY_UNAVAILABLE",
            &[("dependency", "cards")]
        )
    );

    // The database pool has no free connection in time.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200))
        .connect("sqlite::memory:")
        .await
        .unwrap();
    crate::MIGRATIONS.sqlite.run(&pool).await.unwrap();
    let store = Store::new(Db::Sqlite(pool));
    let p = programs_on(store.clone(), None);
    let held = store.write().await.unwrap();
    let get = p.get_version(&get_version(1)).await;
    drop(held);
    assert_eq!(
        refused(get),
        expect(
            Code::Unavailable,
            "DEPENDENCY_UNAVAILABLE",
            &[("dependency", "database")]
        )
    );
}
