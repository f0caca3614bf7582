//! ProgramService and CatalogService over gRPC, on SQLite and on PostgreSQL: drafts, validation
//! with field paths, publication (immutable afterwards), activation now and scheduled,
//! cancellation, idempotent retries and refused key reuse, etags, paging, the category tree,
//! tenancy, and a second rules-svc replica on the same PostgreSQL following the change feed.

use std::time::Duration;

use kopilka_proto::cards as cards_pb;
use kopilka_proto::cards::tier_service_client::TierServiceClient;
use kopilka_proto::rules as pb;
use kopilka_proto::rules::catalog_service_client::CatalogServiceClient;
use kopilka_proto::rules::program_service_client::ProgramServiceClient;
use kopilka_proto::rules::{Program, VersionState};
use kopilka_proto::wkt;
use kopilka_runtime::host::ServiceSettings;
use kopilka_runtime::status::{field_violations_of, reason_of};
use kopilka_tests::Channel;
use kopilka_tests::{on_both_backends, Backend, TestSuite};
use rules_svc::document::{self, DEMO_PROGRAM_YAML};
use secrecy::SecretString;
use tonic::{Code, Status};

on_both_backends!(
    drafts_are_validated_published_and_frozen,
    activations_now_scheduled_and_cancelled,
    every_mutation_is_idempotent,
    versions_list_newest_first_in_pages,
    categories_form_a_tree,
    merchants_never_see_each_other,
);

// ---- helpers ----------------------------------------------------------------------------------

#[derive(Clone)]
struct Rules {
    programs: ProgramServiceClient<Channel>,
    catalog: CatalogServiceClient<Channel>,
}

impl Rules {
    fn of(suite: &TestSuite) -> Self {
        Self::at(suite.channel(suite.addrs.rules))
    }

    fn at(channel: Channel) -> Self {
        Rules {
            programs: ProgramServiceClient::new(channel.clone()),
            catalog: CatalogServiceClient::new(channel),
        }
    }

    async fn create(&self, merchant: &str, program: Program) -> pb::ProgramVersion {
        self.programs
            .clone()
            .create_draft(pb::CreateDraftRequest {
                merchant_id: merchant.into(),
                request_id: rid(),
                source: Some(pb::create_draft_request::Source::Program(program)),
                comment: "first try".into(),
                created_by: "marketer".into(),
            })
            .await
            .expect("CreateDraft")
            .into_inner()
            .version
            .expect("a version")
    }

    async fn publish(
        &self,
        merchant: &str,
        version: u64,
    ) -> Result<pb::PublishVersionResponse, Status> {
        self.programs
            .clone()
            .publish_version(pb::PublishVersionRequest {
                merchant_id: merchant.into(),
                request_id: rid(),
                version,
                tier_codes: vec!["GOLD".into()],
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn activate(
        &self,
        merchant: &str,
        version: u64,
        at: Option<wkt::Timestamp>,
    ) -> Result<pb::ActivateVersionResponse, Status> {
        self.programs
            .clone()
            .activate_version(pb::ActivateVersionRequest {
                merchant_id: merchant.into(),
                request_id: rid(),
                version,
                activate_at: at,
                requested_by: "marketer".into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn active(
        &self,
        merchant: &str,
        at: Option<wkt::Timestamp>,
    ) -> Result<pb::GetActiveVersionResponse, Status> {
        self.programs
            .clone()
            .get_active_version(pb::GetActiveVersionRequest {
                merchant_id: merchant.into(),
                at,
                include_program: false,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn get(&self, merchant: &str, version: u64) -> Result<pb::ProgramVersion, Status> {
        self.programs
            .clone()
            .get_version(pb::GetVersionRequest {
                merchant_id: merchant.into(),
                version,
            })
            .await
            .map(|r| r.into_inner().version.expect("a version"))
    }

    /// A published, active-now version of the demo program for `merchant`.
    async fn published_active(&self, merchant: &str) -> u64 {
        let v = self.create(merchant, demo()).await.version;
        self.publish(merchant, v).await.expect("publish");
        self.activate(merchant, v, None).await.expect("activate");
        v
    }
}

fn rid() -> String {
    uuid_like()
}

/// A unique request id without another dependency: time and a counter.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("req-{nanos}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn merchant(name: &str) -> String {
    format!("{name}-{}", uuid_like())
}

/// The demo café program: valid.
fn demo() -> Program {
    document::from_yaml(DEMO_PROGRAM_YAML).expect("the demo program parses")
}

/// The demo program with the happy-hours discount at 150 %.
fn over_100_percent() -> Program {
    let mut p = demo();
    let Some(pb::rule::Effect::DiscountPercent(d)) = &mut p.rules[2].effect else {
        panic!("rule 2 of the demo program is a percentage discount");
    };
    d.percent = "150".into();
    p
}

/// The demo program with happy hours for GOLD customers only.
fn gold_only() -> Program {
    let mut p = demo();
    p.rules[2].when.get_or_insert_with(Default::default).tiers = vec!["GOLD".into()];
    p
}

fn ts_in(seconds: i64) -> wkt::Timestamp {
    let now = chrono::Utc::now() + chrono::Duration::seconds(seconds);
    wkt::Timestamp {
        seconds: now.timestamp(),
        nanos: now.timestamp_subsec_micros() as i32 * 1000,
    }
}

#[track_caller]
fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, reason: &str) -> Status {
    let status = result.expect_err("the call fails");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status).as_deref(), Some(reason), "{status:?}");
    status
}

// ---- scenarios --------------------------------------------------------------------------------

async fn drafts_are_validated_published_and_frozen(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let m = merchant("cafe");

    // A draft may be invalid; validation lists the findings with their paths.
    let draft = rules.create(&m, over_100_percent()).await;
    assert_eq!(draft.version, 1);
    assert_eq!(draft.state(), VersionState::Draft);
    assert_eq!(draft.fingerprint.len(), 64);
    assert!(!draft.etag.is_empty());
    assert_eq!(
        (draft.comment.as_str(), draft.created_by.as_str()),
        ("first try", "marketer")
    );
    assert!(!draft.active);
    let report = rules
        .programs
        .clone()
        .validate_program(pb::ValidateProgramRequest {
            merchant_id: m.clone(),
            source: Some(pb::validate_program_request::Source::Version(1)),
            tier_codes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!report.valid);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.field.starts_with("rules[2].discount_percent")
                && v.severity() == pb::ViolationSeverity::Error),
        "{:?}",
        report.violations
    );

    // Publishing it is refused with field violations naming the path.
    let status = assert_status(
        rules.publish(&m, 1).await,
        Code::InvalidArgument,
        "PROGRAM_INVALID",
    );
    let fields = field_violations_of(&status);
    assert!(
        fields
            .iter()
            .any(|(f, _)| f.starts_with("rules[2].discount_percent")),
        "{fields:?}"
    );

    // Optimistic concurrency: a stale etag is refused; the current one is taken.
    let mut update = pb::UpdateDraftRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        version: 1,
        program: Some(demo()),
        etag: "stale".into(),
        comment: String::new(),
    };
    assert_status(
        rules.programs.clone().update_draft(update.clone()).await,
        Code::Aborted,
        "CONCURRENT_MODIFICATION",
    );
    update.request_id = rid();
    update.etag = draft.etag.clone();
    let updated = rules
        .programs
        .clone()
        .update_draft(update)
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_ne!(updated.etag, draft.etag);
    assert_ne!(updated.fingerprint, draft.fingerprint);
    assert_eq!(updated.comment, "first try", "an empty comment leaves it");

    // Publish what was reviewed: the old etag is refused, the current one publishes.
    let mut publish = pb::PublishVersionRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        version: 1,
        etag: draft.etag.clone(),
        tier_codes: vec![],
    };
    assert_status(
        rules
            .programs
            .clone()
            .publish_version(publish.clone())
            .await,
        Code::Aborted,
        "CONCURRENT_MODIFICATION",
    );
    publish.request_id = rid();
    publish.etag = updated.etag.clone();
    let published = rules
        .programs
        .clone()
        .publish_version(publish.clone())
        .await
        .unwrap()
        .into_inner();
    let v1 = published.version.unwrap();
    assert_eq!(v1.state(), VersionState::Published);
    assert!(v1.published_at.is_some());
    assert!(
        v1.needs.is_some(),
        "what evaluation needs is stored with it"
    );
    assert!(
        published
            .warnings
            .iter()
            .all(|w| w.severity() == pb::ViolationSeverity::Warning),
        "{:?}",
        published.warnings
    );
    // Publishing again (another request id, unchanged etag) is a no-op success.
    publish.request_id = rid();
    let again = rules
        .programs
        .clone()
        .publish_version(publish)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version.unwrap().published_at, v1.published_at);

    // Published is frozen.
    assert_status(
        rules
            .programs
            .clone()
            .update_draft(pb::UpdateDraftRequest {
                merchant_id: m.clone(),
                request_id: rid(),
                version: 1,
                program: Some(demo()),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "VERSION_IMMUTABLE",
    );
    assert_status(
        rules
            .programs
            .clone()
            .delete_draft(pb::DeleteDraftRequest {
                merchant_id: m.clone(),
                request_id: rid(),
                version: 1,
            })
            .await,
        Code::FailedPrecondition,
        "VERSION_IMMUTABLE",
    );
    assert_eq!(rules.get(&m, 1).await.unwrap().etag, updated.etag);

    // A copy is a new draft based on it; a deleted draft's number is not reused.
    let copy = rules
        .programs
        .clone()
        .create_draft(pb::CreateDraftRequest {
            merchant_id: m.clone(),
            request_id: rid(),
            source: Some(pb::create_draft_request::Source::CopyOfVersion(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!((copy.version, copy.based_on_version), (2, 1));
    assert_eq!(copy.fingerprint, v1.fingerprint);
    rules
        .programs
        .clone()
        .delete_draft(pb::DeleteDraftRequest {
            merchant_id: m.clone(),
            request_id: rid(),
            version: 2,
        })
        .await
        .unwrap();
    assert_status(rules.get(&m, 2).await, Code::NotFound, "VERSION_NOT_FOUND");
    assert_eq!(rules.create(&m, demo()).await.version, 3);

    // Tier references: checked against the request's codes, else against cards-svc's tiers.
    let gold = rules.create(&m, gold_only()).await.version;
    let validate = |tier_codes: Vec<String>| {
        let mut programs = rules.programs.clone();
        let m = m.clone();
        async move {
            programs
                .validate_program(pb::ValidateProgramRequest {
                    merchant_id: m,
                    source: Some(pb::validate_program_request::Source::Version(gold)),
                    tier_codes,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let unknown = validate(vec![]).await;
    assert!(
        !unknown.valid,
        "cards-svc has no tier GOLD: {:?}",
        unknown.violations
    );
    assert!(unknown
        .violations
        .iter()
        .any(|v| v.code == "UNKNOWN_TIER" && v.field.starts_with("rules[2]")));
    assert!(validate(vec!["GOLD".into()]).await.valid);
    TierServiceClient::new(suite.channel(suite.addrs.cards))
        .upsert_tier(cards_pb::UpsertTierRequest {
            merchant_id: m.clone(),
            request_id: rid(),
            tier: Some(cards_pb::Tier {
                code: "GOLD".into(),
                name: "Gold".into(),
                rank: 1,
                ..Default::default()
            }),
        })
        .await
        .expect("UpsertTier");
    let known = validate(vec![]).await;
    assert!(known.valid, "{:?}", known.violations);
    assert_eq!(
        rules
            .get(&m, gold)
            .await
            .unwrap()
            .needs
            .map(|n| n.tier_codes),
        Some(vec!["GOLD".to_owned()]),
        "a validated draft remembers what it needs"
    );

    // Bad input names its fields.
    let status = rules
        .programs
        .clone()
        .create_draft(pb::CreateDraftRequest {
            merchant_id: String::new(),
            request_id: "x".repeat(129),
            source: None,
            comment: "c".repeat(2001),
            created_by: "b".repeat(129),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = field_violations_of(&status)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        [
            "merchant_id",
            "request_id",
            "source",
            "comment",
            "created_by"
        ]
    );
}

async fn activations_now_scheduled_and_cancelled(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let m = merchant("wash");
    assert_status(
        rules.active(&m, None).await,
        Code::FailedPrecondition,
        "NO_ACTIVE_PROGRAM",
    );

    let v1 = rules.create(&m, demo()).await.version;
    assert_status(
        rules.activate(&m, v1, None).await,
        Code::FailedPrecondition,
        "PROGRAM_NOT_PUBLISHED",
    );
    assert_status(
        rules.activate(&m, 99, None).await,
        Code::NotFound,
        "VERSION_NOT_FOUND",
    );
    rules.publish(&m, v1).await.unwrap();
    let now = rules.activate(&m, v1, None).await.unwrap();
    assert!(now.active_now);
    assert!(rules.get(&m, v1).await.unwrap().active);

    // v2 scheduled in an hour, v3 in two; the one at the hour is then replaced by v3.
    let v2 = rules.create(&m, demo()).await.version;
    let v3 = rules.create(&m, demo()).await.version;
    rules.publish(&m, v2).await.unwrap();
    rules.publish(&m, v3).await.unwrap();
    let hour = ts_in(3600);
    let scheduled = rules.activate(&m, v2, Some(hour)).await.unwrap();
    assert!(!scheduled.active_now);
    let two_hours = rules.activate(&m, v2, Some(ts_in(7200))).await.unwrap();
    let active = rules.active(&m, None).await.unwrap();
    assert_eq!(active.version.as_ref().unwrap().version, v1);
    assert!(active.version.unwrap().active);
    assert_eq!(
        active
            .scheduled
            .iter()
            .map(|a| a.version)
            .collect::<Vec<_>>(),
        [v2, v2],
        "soonest first"
    );
    let replaced = rules.activate(&m, v3, Some(hour)).await.unwrap();
    let later = rules.active(&m, Some(ts_in(3600 + 60))).await.unwrap();
    assert_eq!(
        later.version.as_ref().unwrap().version,
        v3,
        "the same instant replaces"
    );
    assert!(!later.version.unwrap().active, "v3 is not active now");
    assert_eq!(
        later.activation.unwrap().activation_id,
        replaced.activation.as_ref().unwrap().activation_id
    );
    assert_eq!(
        rules
            .active(&m, Some(ts_in(7300)))
            .await
            .unwrap()
            .version
            .unwrap()
            .version,
        v2
    );
    assert_eq!(
        rules
            .active(&m, Some(ts_in(-3600)))
            .await
            .map(|a| a.version.unwrap().version)
            .ok(),
        None,
        "nothing was active an hour ago"
    );

    // Cancelling: only scheduled ones; the replaced id is gone.
    let cancel = |id: String| {
        let mut programs = rules.programs.clone();
        let m = m.clone();
        async move {
            programs
                .cancel_activation(pb::CancelActivationRequest {
                    merchant_id: m,
                    request_id: rid(),
                    activation_id: id,
                })
                .await
        }
    };
    assert_status(
        cancel(scheduled.activation.unwrap().activation_id).await,
        Code::NotFound,
        "ACTIVATION_NOT_FOUND",
    );
    assert_status(
        cancel(now.activation.unwrap().activation_id).await,
        Code::NotFound,
        "ACTIVATION_NOT_FOUND",
    );
    let cancelled = cancel(two_hours.activation.as_ref().unwrap().activation_id.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.activation, two_hours.activation);
    assert_eq!(
        rules
            .active(&m, Some(ts_in(7300)))
            .await
            .unwrap()
            .version
            .unwrap()
            .version,
        v3,
        "after the cancellation v3 stays"
    );
    let remaining = rules.active(&m, None).await.unwrap().scheduled;
    assert_eq!(
        remaining.iter().map(|a| a.version).collect::<Vec<_>>(),
        [v3]
    );
}

async fn every_mutation_is_idempotent(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let mut p = rules.programs.clone();
    let mut c = rules.catalog.clone();
    let m = merchant("fit");

    // Each request twice gives the same answer; the same id with another payload is refused.
    let create = pb::CreateDraftRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        source: Some(pb::create_draft_request::Source::Program(demo())),
        ..Default::default()
    };
    let first = p.create_draft(create.clone()).await.unwrap().into_inner();
    assert_eq!(
        p.create_draft(create.clone()).await.unwrap().into_inner(),
        first
    );
    let mut other = create.clone();
    other.comment = "different".into();
    assert_status(
        p.create_draft(other).await,
        Code::FailedPrecondition,
        "IDEMPOTENCY_KEY_REUSED",
    );
    let version = first.version.unwrap().version;
    assert_eq!(
        rules.create(&m, demo()).await.version,
        version + 1,
        "one draft only"
    );

    let update = pb::UpdateDraftRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        version,
        program: Some(demo()),
        ..Default::default()
    };
    let first = p.update_draft(update.clone()).await.unwrap().into_inner();
    assert_eq!(
        p.update_draft(update.clone()).await.unwrap().into_inner(),
        first
    );
    assert_status(
        p.publish_version(pb::PublishVersionRequest {
            merchant_id: m.clone(),
            request_id: update.request_id.clone(),
            version,
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "IDEMPOTENCY_KEY_REUSED",
    );

    let publish = pb::PublishVersionRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        version,
        ..Default::default()
    };
    let first = p
        .publish_version(publish.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.publish_version(publish).await.unwrap().into_inner(),
        first
    );

    let activate = pb::ActivateVersionRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        version,
        activate_at: Some(ts_in(600)),
        requested_by: "ops".into(),
    };
    let first = p
        .activate_version(activate.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.activate_version(activate.clone())
            .await
            .unwrap()
            .into_inner(),
        first
    );
    assert_eq!(
        rules
            .active(&m, Some(ts_in(700)))
            .await
            .unwrap()
            .scheduled
            .len(),
        0
    );
    let scheduled = rules.active(&m, Some(ts_in(-1))).await;
    assert!(
        scheduled.is_err(),
        "one activation only, still in the future"
    );

    let cancel = pb::CancelActivationRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        activation_id: first.activation.unwrap().activation_id,
    };
    let first = p
        .cancel_activation(cancel.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.cancel_activation(cancel).await.unwrap().into_inner(),
        first
    );

    let delete = pb::DeleteDraftRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        version: version + 1,
    };
    let first = p.delete_draft(delete.clone()).await.unwrap().into_inner();
    assert_eq!(p.delete_draft(delete).await.unwrap().into_inner(), first);

    let upsert = pb::UpsertCategoriesRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        categories: vec![category("drinks", "")],
    };
    let first = c
        .upsert_categories(upsert.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.created, first.updated), (1, 0));
    assert_eq!(
        c.upsert_categories(upsert.clone())
            .await
            .unwrap()
            .into_inner(),
        first
    );
    let mut other = upsert;
    other.categories[0].name = "Beverages".into();
    assert_status(
        c.upsert_categories(other).await,
        Code::FailedPrecondition,
        "IDEMPOTENCY_KEY_REUSED",
    );

    let delete = pb::DeleteCategoriesRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        category_ids: vec!["drinks".into()],
    };
    let first = c
        .delete_categories(delete.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.deleted, 1);
    assert_eq!(
        c.delete_categories(delete).await.unwrap().into_inner(),
        first
    );
}

async fn versions_list_newest_first_in_pages(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let m = merchant("shop");
    for _ in 0..5 {
        rules.create(&m, demo()).await;
    }
    rules.publish(&m, 2).await.unwrap();
    rules.publish(&m, 4).await.unwrap();
    rules.activate(&m, 4, None).await.unwrap();
    let list = |state: VersionState, size: i32, token: String| {
        let mut programs = rules.programs.clone();
        let m = m.clone();
        async move {
            programs
                .list_versions(pb::ListVersionsRequest {
                    merchant_id: m,
                    state: state as i32,
                    include_program: false,
                    page_size: size,
                    page_token: token,
                })
                .await
        }
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(VersionState::Unspecified, 2, token)
            .await
            .unwrap()
            .into_inner();
        assert!(page.versions.iter().all(|v| v.program.is_none()));
        seen.extend(page.versions.iter().map(|v| (v.version, v.active)));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        seen,
        [(5, false), (4, true), (3, false), (2, false), (1, false)]
    );
    let published = list(VersionState::Published, 0, String::new())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        published
            .versions
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        [4, 2]
    );
    assert!(published.next_page_token.is_empty());
    let drafts = rules
        .programs
        .clone()
        .list_versions(pb::ListVersionsRequest {
            merchant_id: m.clone(),
            state: VersionState::Draft as i32,
            include_program: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drafts.versions.len(), 3);
    assert!(drafts.versions.iter().all(|v| v.program.is_some()));
    assert_status(
        list(VersionState::Unspecified, 2, "garbage".into()).await,
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );
    let status = list(VersionState::Unspecified, 101, String::new())
        .await
        .unwrap_err();
    assert_eq!(field_violations_of(&status)[0].0, "page_size");
}

fn category(id: &str, parent: &str) -> pb::Category {
    pb::Category {
        category_id: id.into(),
        name: id.to_uppercase(),
        parent_id: parent.into(),
    }
}

async fn categories_form_a_tree(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let mut c = rules.catalog.clone();
    let m = merchant("deli");
    let upsert = |categories: Vec<pb::Category>| pb::UpsertCategoriesRequest {
        merchant_id: m.clone(),
        request_id: rid(),
        categories,
    };
    // Parents may come later in the same batch.
    let r = c
        .upsert_categories(upsert(vec![
            category("espresso", "coffee"),
            category("coffee", "drinks"),
            category("drinks", ""),
            category("tea", "drinks"),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.created, r.updated), (4, 0));
    let status = c
        .upsert_categories(upsert(vec![
            category("drinks", "espresso"),
            category("x", "nowhere"),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = field_violations_of(&status);
    assert_eq!(fields[0].0, "categories[0].parent_id");
    assert!(fields[0].1.contains("cycle"), "{fields:?}");
    assert_eq!(fields[1].0, "categories[1].parent_id");
    let too_many: Vec<pb::Category> = (0..1001).map(|i| category(&format!("c{i}"), "")).collect();
    let status = c.upsert_categories(upsert(too_many)).await.unwrap_err();
    assert_eq!(field_violations_of(&status)[0].0, "categories");

    let r = c
        .upsert_categories(upsert(vec![pb::Category {
            name: "Hot drinks".into(),
            ..category("drinks", "")
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.created, r.updated), (0, 1));

    let list = |parent: &str, size: i32, token: String| {
        let mut c = rules.catalog.clone();
        let req = pb::ListCategoriesRequest {
            merchant_id: m.clone(),
            parent_id: parent.into(),
            page_size: size,
            page_token: token,
        };
        async move { c.list_categories(req).await }
    };
    let first = list("", 3, String::new()).await.unwrap().into_inner();
    let ids: Vec<&str> = first
        .categories
        .iter()
        .map(|c| c.category_id.as_str())
        .collect();
    assert_eq!(ids, ["coffee", "drinks", "espresso"]);
    let rest = list("", 3, first.next_page_token)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.categories, [category("tea", "drinks")]);
    assert!(rest.next_page_token.is_empty());
    let children = list("drinks", 0, String::new()).await.unwrap().into_inner();
    assert_eq!(
        children.categories,
        [category("coffee", "drinks"), category("tea", "drinks")]
    );
    assert_status(
        list("", 0, "zz".into()).await,
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );

    // A program naming a category the catalog lacks is invalid now that there is a catalog.
    let report = rules
        .programs
        .clone()
        .validate_program(pb::ValidateProgramRequest {
            merchant_id: m.clone(),
            source: Some(pb::validate_program_request::Source::Program(demo())),
            tier_codes: vec!["GOLD".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.code == "UNKNOWN_CATEGORY" && v.field.starts_with("rules[0].scope")),
        "{:?}",
        report.violations
    );

    // Deleting moves children up; unknown ids are skipped.
    let deleted = c
        .delete_categories(pb::DeleteCategoriesRequest {
            merchant_id: m.clone(),
            request_id: rid(),
            category_ids: vec!["coffee".into(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    let children = list("drinks", 0, String::new()).await.unwrap().into_inner();
    assert_eq!(
        children.categories,
        [category("espresso", "drinks"), category("tea", "drinks")]
    );
}

async fn merchants_never_see_each_other(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let a = merchant("a");
    let b = merchant("b");
    let v = rules.published_active(&a).await;
    assert_status(rules.get(&b, v).await, Code::NotFound, "VERSION_NOT_FOUND");
    assert_status(
        rules.active(&b, None).await,
        Code::FailedPrecondition,
        "NO_ACTIVE_PROGRAM",
    );
    assert_status(
        rules.publish(&b, v).await,
        Code::NotFound,
        "VERSION_NOT_FOUND",
    );
    assert_status(
        rules.activate(&b, v, None).await,
        Code::NotFound,
        "VERSION_NOT_FOUND",
    );
    let listed = rules
        .programs
        .clone()
        .list_versions(pb::ListVersionsRequest {
            merchant_id: b.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.versions.is_empty());
    let a_active = rules.active(&a, None).await.unwrap();
    assert_status(
        rules
            .programs
            .clone()
            .cancel_activation(pb::CancelActivationRequest {
                merchant_id: b.clone(),
                request_id: rid(),
                activation_id: a_active.activation.unwrap().activation_id,
            })
            .await,
        Code::NotFound,
        "ACTIVATION_NOT_FOUND",
    );
    // The same request id under another merchant is another request.
    let shared = rid();
    for m in [&a, &b] {
        rules
            .programs
            .clone()
            .create_draft(pb::CreateDraftRequest {
                merchant_id: m.clone(),
                request_id: shared.clone(),
                source: Some(pb::create_draft_request::Source::Program(demo())),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// A second rules-svc replica on the same PostgreSQL sees publications and activations made
/// through the first one, and the first sees the second's, through the change feed.
#[tokio::test]
async fn a_second_replica_follows_the_change_feed() {
    let suite = TestSuite::start(Backend::PostgresRedis).await;
    let url = suite.postgres.as_ref().expect("PostgreSQL").url("rules");
    let config = rules_svc::Config {
        service: ServiceSettings {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            database_url: SecretString::from(url),
            service_token: Some(kopilka_tests::service_token()),
            ..ServiceSettings::embedded(0, "unused")
        },
        ..Default::default()
    };
    let (replica, state) = rules_svc::build_with_state(config)
        .await
        .expect("second replica");
    let addr = replica.local_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(replica.run_until(stop.clone().cancelled_owned()));
    let one = Rules::of(&suite);
    let two = Rules::at(kopilka_tests::channel(addr));

    let m = merchant("chain");
    let v1 = one.published_active(&m).await;
    // The second replica caches the schedule with v1 in force …
    let seen = eventually(
        || async {
            two.active(&m, None)
                .await
                .ok()
                .and_then(|a| a.version)
                .map(|v| v.version)
        },
        Some(v1),
    )
    .await;
    assert_eq!(seen, Some(v1));
    let resolved = state
        .resolve(&m, None, chrono::Utc::now(), false, &[])
        .await
        .unwrap();
    assert_eq!(resolved.plan.version(), v1);

    // … and learns of v2's activation on the first replica without a restart.
    let v2 = one.create(&m, demo()).await.version;
    one.publish(&m, v2).await.unwrap();
    one.activate(&m, v2, None).await.unwrap();
    let seen = eventually(
        || async {
            two.active(&m, None)
                .await
                .ok()
                .and_then(|a| a.version)
                .map(|v| v.version)
        },
        Some(v2),
    )
    .await;
    assert_eq!(seen, Some(v2), "the second replica sees the new activation");
    let resolved = eventually(
        || async {
            state
                .resolve(&m, None, chrono::Utc::now(), false, &[])
                .await
                .ok()
                .map(|r| r.plan.version())
        },
        Some(v2),
    )
    .await;
    assert_eq!(resolved, Some(v2));

    // The other way round: a catalog change on the second replica reaches the first.
    let before = one.active(&m, None).await.unwrap();
    two.catalog
        .clone()
        .upsert_categories(pb::UpsertCategoriesRequest {
            merchant_id: m.clone(),
            request_id: rid(),
            categories: vec![category("sale", "")],
        })
        .await
        .unwrap();
    let v3 = two.create(&m, demo()).await.version;
    two.publish(&m, v3).await.unwrap();
    two.activate(&m, v3, None).await.unwrap();
    let seen = eventually(
        || async {
            one.active(&m, None)
                .await
                .ok()
                .and_then(|a| a.version)
                .map(|v| v.version)
        },
        Some(v3),
    )
    .await;
    assert_eq!(seen, Some(v3));
    assert_ne!(before.version.unwrap().version, v3);
    let catalog = eventually(
        || async { state.catalog(&m).await.ok().map(|c| c.contains("sale")) },
        Some(true),
    )
    .await;
    assert_eq!(catalog, Some(true));

    stop.cancel();
    running.await.unwrap().unwrap();
}

/// Polls `probe` until it returns `want` or 15 s pass; returns the last value. (The feed is
/// polled every second; the deadline only keeps a broken build from hanging.)
async fn eventually<T, F, Fut>(probe: F, want: T) -> T
where
    T: PartialEq,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = probe().await;
        if got == want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
