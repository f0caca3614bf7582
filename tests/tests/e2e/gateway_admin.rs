//! AdminService through the gateway, on SQLite and on PostgreSQL + Redis: stores, terminals and
//! API keys with their lifecycle (an issued terminal key authenticates, a disabled terminal's
//! key is refused, a revoked key is unknown, the last admin key cannot be revoked), idempotent
//! repeats answering the same record (a repeated IssueApiKey without its secret), merchants
//! kept apart, missing and bad keys; programs applied in one call (publish and activate) and
//! invalid ones refused with field violations; tiers and categories forwarded.
//!
//! Each scenario is one async fn run by two `#[tokio::test]`s, one per backend.

use kopilka_proto::cards as cards_pb;
use kopilka_proto::cards::tier_service_client::TierServiceClient;
use kopilka_proto::gateway::admin_service_client::AdminServiceClient;
use kopilka_proto::gateway::{self as gw};
use kopilka_proto::rules as rules_pb;
use kopilka_proto::wkt::FieldMask;
use kopilka_runtime::status::{field_violations_of, reason_of};
use kopilka_tests::gateway::{authed, SeededMerchant};
use kopilka_tests::Channel;
use kopilka_tests::{on_both_backends, TestSuite};
use tonic::{Code, Status};

on_both_backends!(
    stores_terminals_and_keys_have_a_lifecycle,
    api_keys_are_checked_and_revoked,
    merchants_never_see_each_others_records,
    programs_are_applied_and_invalid_ones_refused,
    tiers_and_categories_are_forwarded,
);

// ---- helpers ----------------------------------------------------------------------------------

type Admin = AdminServiceClient<Channel>;

fn admin(suite: &TestSuite) -> Admin {
    AdminServiceClient::new(suite.channel(suite.addrs.gateway))
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = result.expect_err("the call fails");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status).as_deref(), Some(reason), "{status:?}");
    status
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<tonic::Response<T>, Status>, field: &str) {
    let status = result.expect_err("the call fails");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = field_violations_of(&status);
    assert!(
        fields.iter().any(|(f, _)| f == field),
        "no violation on {field}: {fields:?}"
    );
}

fn store(name: &str) -> gw::Store {
    gw::Store {
        name: name.into(),
        address: "2 Side street".into(),
        external_id: format!("ext-{name}"),
        ..Default::default()
    }
}

async fn create_store(c: &mut Admin, key: &str, rid: &str, name: &str) -> gw::Store {
    c.create_store(authed(
        gw::CreateStoreRequest {
            request_id: rid.into(),
            store: Some(store(name)),
        },
        key,
    ))
    .await
    .expect("CreateStore")
    .into_inner()
    .store
    .expect("a store")
}

async fn issue(
    c: &mut Admin,
    key: &str,
    rid: &str,
    scope: gw::KeyScope,
    terminal_id: &str,
) -> Result<gw::IssueApiKeyResponse, Status> {
    c.issue_api_key(authed(
        gw::IssueApiKeyRequest {
            request_id: rid.into(),
            scope: scope as i32,
            terminal_id: terminal_id.into(),
            name: format!("key {rid}"),
            expires_at: None,
        },
        key,
    ))
    .await
    .map(|r| r.into_inner())
}

async fn list_stores(
    c: &mut Admin,
    key: &str,
) -> Result<tonic::Response<gw::ListStoresResponse>, Status> {
    c.list_stores(authed(gw::ListStoresRequest::default(), key))
        .await
}

async fn revoke(c: &mut Admin, key: &str, rid: &str, key_id: &str) -> Result<gw::ApiKey, Status> {
    c.revoke_api_key(authed(
        gw::RevokeApiKeyRequest {
            request_id: rid.into(),
            key_id: key_id.into(),
        },
        key,
    ))
    .await
    .map(|r| r.into_inner().api_key.expect("a key"))
}

fn unix_seconds() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.expect("after 1970").as_secs() as i64
}

/// The key id of a plaintext `kpk_<key_id>_<secret>`.
fn key_id_of(key: &str) -> String {
    key.strip_prefix("kpk_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id.to_owned())
        .expect("a kpk_ key")
}

// ---- scenarios --------------------------------------------------------------------------------

async fn stores_terminals_and_keys_have_a_lifecycle(suite: TestSuite) {
    let m: SeededMerchant = suite.seed_merchant("m-admin").await;
    let key = m.admin_key.as_str();
    let mut c = admin(&suite);

    // The merchant and its settings.
    let merchant = c
        .get_merchant(authed(gw::GetMerchantRequest {}, key))
        .await
        .unwrap()
        .into_inner()
        .merchant
        .unwrap();
    assert_eq!(merchant.merchant_id, "m-admin");
    let settings = merchant.settings.unwrap();
    assert_eq!(settings.currency, "RUB");
    assert_eq!(settings.time_zone, "Europe/Moscow");
    assert_eq!(settings.default_phone_region, "RU");
    assert_eq!(settings.locale, "ru");
    assert_eq!(settings.referral_max_depth, 3);
    assert_eq!(merchant.state, gw::MerchantState::Active as i32);

    // A store; the same request again answers the same record; another payload under the same
    // request id is refused.
    let created = create_store(&mut c, key, "store-1", "Airport").await;
    assert!(created.store_id.starts_with("st_"), "{created:?}");
    assert!(created.active);
    assert_eq!(created.name, "Airport");
    assert_eq!(
        created,
        create_store(&mut c, key, "store-1", "Airport").await
    );
    assert_status(
        c.create_store(authed(
            gw::CreateStoreRequest {
                request_id: "store-1".into(),
                store: Some(store("Elsewhere")),
            },
            key,
        ))
        .await,
        Code::FailedPrecondition,
        "IDEMPOTENCY_KEY_REUSED",
    );
    let got = c
        .get_store(authed(
            gw::GetStoreRequest {
                store_id: created.store_id.clone(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .store
        .unwrap();
    assert_eq!(got, created);
    assert_status(
        c.get_store(authed(
            gw::GetStoreRequest {
                store_id: "st_nope".into(),
            },
            key,
        ))
        .await,
        Code::NotFound,
        "STORE_NOT_FOUND",
    );

    // Bad input: field violations.
    for (bad, field) in [
        (gw::Store::default(), "store.name"),
        (store(&"x".repeat(201)), "store.name"),
        (
            gw::Store {
                time_zone: "Mars/Olympus".into(),
                ..store("Z")
            },
            "store.time_zone",
        ),
        (
            gw::Store {
                location: Some(gw::GeoPoint {
                    latitude: 91.0,
                    longitude: 0.0,
                }),
                ..store("Z")
            },
            "store.location.latitude",
        ),
    ] {
        assert_invalid(
            c.create_store(authed(
                gw::CreateStoreRequest {
                    request_id: format!("bad-{field}"),
                    store: Some(bad),
                },
                key,
            ))
            .await,
            field,
        );
    }
    assert_invalid(
        c.create_store(authed(
            gw::CreateStoreRequest {
                request_id: String::new(),
                store: Some(store("Z")),
            },
            key,
        ))
        .await,
        "request_id",
    );
    assert_invalid(
        c.list_stores(authed(
            gw::ListStoresRequest {
                page_size: 101,
                ..Default::default()
            },
            key,
        ))
        .await,
        "page_size",
    );

    // Pagination by id: three stores (the seeded one and two more), two per page.
    let third = create_store(&mut c, key, "store-2", "Harbour").await;
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..5 {
        let page = c
            .list_stores(authed(
                gw::ListStoresRequest {
                    include_inactive: false,
                    page_size: 2,
                    page_token: token.clone(),
                },
                key,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.stores.len() <= 2);
        seen.extend(page.stores.into_iter().map(|s| s.store_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut expected = vec![
        m.store_id.clone(),
        created.store_id.clone(),
        third.store_id.clone(),
    ];
    expected.sort();
    assert_eq!(seen, expected);

    // UpdateStore changes only the masked fields; a closed store is listed on request only.
    let updated = c
        .update_store(authed(
            gw::UpdateStoreRequest {
                request_id: "upd-1".into(),
                store: Some(gw::Store {
                    store_id: third.store_id.clone(),
                    name: "Harbour (closed)".into(),
                    address: "ignored: not in the mask".into(),
                    active: false,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into(), "active".into()],
                }),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .store
        .unwrap();
    assert_eq!(updated.name, "Harbour (closed)");
    assert_eq!(updated.address, third.address);
    assert!(!updated.active);
    let listed = list_stores(&mut c, key).await.unwrap().into_inner().stores;
    assert!(listed.iter().all(|s| s.store_id != third.store_id));
    let all = c
        .list_stores(authed(
            gw::ListStoresRequest {
                include_inactive: true,
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .stores;
    assert!(all.iter().any(|s| s == &updated));
    assert_invalid(
        c.update_store(authed(
            gw::UpdateStoreRequest {
                request_id: "upd-2".into(),
                store: Some(gw::Store {
                    store_id: third.store_id.clone(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["created_at".into()],
                }),
            },
            key,
        ))
        .await,
        "update_mask.paths[0]",
    );

    // Terminals: in an existing store only; listed per store; disabled and enabled again.
    let terminal = c
        .create_terminal(authed(
            gw::CreateTerminalRequest {
                request_id: "till-2".into(),
                store_id: created.store_id.clone(),
                name: "Till 2".into(),
                external_id: "FN-0002".into(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .terminal
        .unwrap();
    assert!(terminal.terminal_id.starts_with("tm_"));
    assert!(terminal.enabled);
    assert_eq!(terminal.store_id, created.store_id);
    assert_eq!(terminal.external_id, "FN-0002");
    assert_status(
        c.create_terminal(authed(
            gw::CreateTerminalRequest {
                request_id: "till-x".into(),
                store_id: "st_missing".into(),
                name: "Till X".into(),
                external_id: String::new(),
            },
            key,
        ))
        .await,
        Code::NotFound,
        "STORE_NOT_FOUND",
    );
    let in_store = c
        .list_terminals(authed(
            gw::ListTerminalsRequest {
                store_id: created.store_id.clone(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .terminals;
    assert_eq!(in_store, vec![terminal.clone()]);
    let everywhere = c
        .list_terminals(authed(gw::ListTerminalsRequest::default(), key))
        .await
        .unwrap()
        .into_inner()
        .terminals;
    assert_eq!(everywhere.len(), 2);

    // A terminal key for it: the secret once, and it authenticates (but may not administrate).
    let first = issue(
        &mut c,
        key,
        "key-1",
        gw::KeyScope::Terminal,
        &terminal.terminal_id,
    )
    .await
    .unwrap();
    let record = first.api_key.clone().unwrap();
    assert!(first.secret.starts_with(&record.prefix), "{record:?}");
    assert_eq!(record.scope, gw::KeyScope::Terminal as i32);
    assert_eq!(record.terminal_id, terminal.terminal_id);
    assert_eq!(record.store_id, created.store_id);
    assert_eq!(key_id_of(&first.secret), record.key_id);
    let again = issue(
        &mut c,
        key,
        "key-1",
        gw::KeyScope::Terminal,
        &terminal.terminal_id,
    )
    .await
    .unwrap();
    assert_eq!(again.api_key, first.api_key);
    assert!(again.secret.is_empty());
    let till_key = first.secret.as_str();
    assert!(record.last_used_at.is_none());
    let used_from = unix_seconds() - 1;
    assert_status(
        list_stores(&mut c, till_key).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED_KEY_SCOPE",
    );
    let used_to = unix_seconds() + 1;

    // That call is its last use (refused or not), and its terminal's last call; both are
    // written once a minute at most, so a second call leaves them as they are.
    let last_use = |c: Admin| {
        let terminal_id = terminal.terminal_id.clone();
        async move {
            let mut c = c;
            let keys = c
                .list_api_keys(authed(
                    gw::ListApiKeysRequest {
                        terminal_id: terminal_id.clone(),
                        ..Default::default()
                    },
                    key,
                ))
                .await
                .unwrap()
                .into_inner()
                .api_keys;
            let terminals = c
                .list_terminals(authed(gw::ListTerminalsRequest::default(), key))
                .await
                .unwrap()
                .into_inner()
                .terminals;
            let seen = terminals
                .into_iter()
                .find(|t| t.terminal_id == terminal_id)
                .expect("listed")
                .last_seen_at;
            (
                keys[0].last_used_at.expect("the key's use recorded"),
                seen.expect("the terminal seen"),
            )
        }
    };
    let (used, seen) = last_use(c.clone()).await;
    assert!((used_from..=used_to).contains(&used.seconds), "{used:?}");
    assert!((used_from..=used_to).contains(&seen.seconds), "{seen:?}");
    list_stores(&mut c, till_key).await.unwrap_err();
    assert_eq!(last_use(c.clone()).await, (used, seen));

    // Disabled: its keys stop at once; enabled: they work again. Repeats answer the same.
    let disabled = c
        .disable_terminal(authed(
            gw::DisableTerminalRequest {
                request_id: "dis-1".into(),
                terminal_id: terminal.terminal_id.clone(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .terminal
        .unwrap();
    assert!(!disabled.enabled);
    assert_status(
        list_stores(&mut c, till_key).await,
        Code::PermissionDenied,
        "TERMINAL_DISABLED",
    );
    let listed = c
        .list_terminals(authed(gw::ListTerminalsRequest::default(), key))
        .await
        .unwrap()
        .into_inner()
        .terminals;
    assert_eq!(
        listed.len(),
        1,
        "disabled terminals are listed on request only"
    );
    let enabled = c
        .enable_terminal(authed(
            gw::EnableTerminalRequest {
                request_id: "en-1".into(),
                terminal_id: terminal.terminal_id.clone(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .terminal
        .unwrap();
    assert!(enabled.enabled);
    assert_status(
        list_stores(&mut c, till_key).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED_KEY_SCOPE",
    );
    assert_status(
        c.disable_terminal(authed(
            gw::DisableTerminalRequest {
                request_id: "dis-2".into(),
                terminal_id: "tm_missing".into(),
            },
            key,
        ))
        .await,
        Code::NotFound,
        "TERMINAL_NOT_FOUND",
    );
}

async fn api_keys_are_checked_and_revoked(suite: TestSuite) {
    let m = suite.seed_merchant("m-keys").await;
    let key = m.admin_key.as_str();
    let mut c = admin(&suite);

    // Scope and terminal rules for issuing.
    assert_invalid(
        issue(&mut c, key, "p-1", gw::KeyScope::Platform, "")
            .await
            .map(tonic::Response::new),
        "scope",
    );
    assert_invalid(
        issue(&mut c, key, "p-2", gw::KeyScope::Unspecified, "")
            .await
            .map(tonic::Response::new),
        "scope",
    );
    assert_invalid(
        issue(&mut c, key, "t-0", gw::KeyScope::Terminal, "")
            .await
            .map(tonic::Response::new),
        "terminal_id",
    );
    assert_status(
        issue(&mut c, key, "t-1", gw::KeyScope::Terminal, "tm_missing")
            .await
            .map(tonic::Response::new),
        Code::NotFound,
        "TERMINAL_NOT_FOUND",
    );

    // A second terminal key: listed by terminal, revoked, then unknown to authentication.
    let till = issue(&mut c, key, "t-2", gw::KeyScope::Terminal, &m.terminal_id)
        .await
        .unwrap();
    let till_id = till.api_key.as_ref().unwrap().key_id.clone();
    let of_terminal = c
        .list_api_keys(authed(
            gw::ListApiKeysRequest {
                terminal_id: m.terminal_id.clone(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(of_terminal.len(), 2, "{of_terminal:?}");
    assert!(of_terminal.iter().all(|k| k.store_id == m.store_id));
    assert_status(
        list_stores(&mut c, &till.secret).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED_KEY_SCOPE",
    );
    let revoked = revoke(&mut c, key, "r-1", &till_id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(revoke(&mut c, key, "r-1", &till_id).await.unwrap(), revoked);
    assert_status(
        list_stores(&mut c, &till.secret).await,
        Code::Unauthenticated,
        "API_KEY_INVALID",
    );
    let active = c
        .list_api_keys(authed(gw::ListApiKeysRequest::default(), key))
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert!(active.iter().all(|k| k.key_id != till_id));
    assert_eq!(active.len(), 2, "the seeded admin and terminal keys");
    let everything = c
        .list_api_keys(authed(
            gw::ListApiKeysRequest {
                include_revoked: true,
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert!(everything.contains(&revoked));
    assert_status(
        revoke(&mut c, key, "r-2", "0011223344556677")
            .await
            .map(tonic::Response::new),
        Code::NotFound,
        "API_KEY_NOT_FOUND",
    );

    // A second admin key works; the first is revoked with it; the last one cannot be.
    let second = issue(&mut c, key, "a-1", gw::KeyScope::Admin, "")
        .await
        .unwrap();
    let second_key = second.secret.as_str();
    let second_id = second.api_key.as_ref().unwrap().key_id.clone();
    list_stores(&mut c, second_key)
        .await
        .expect("a new admin key works");
    revoke(&mut c, second_key, "r-3", &key_id_of(key))
        .await
        .unwrap();
    assert_status(
        list_stores(&mut c, key).await,
        Code::Unauthenticated,
        "API_KEY_INVALID",
    );
    assert_status(
        revoke(&mut c, second_key, "r-4", &second_id)
            .await
            .map(tonic::Response::new),
        Code::FailedPrecondition,
        "LAST_ADMIN_KEY",
    );
    list_stores(&mut c, second_key).await.expect("still works");

    // No key, a garbage key, a well-formed unknown key.
    let status = c
        .list_stores(tonic::Request::new(gw::ListStoresRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason_of(&status).as_deref(), Some("API_KEY_INVALID"));
    for bad in [
        "garbage",
        "kpk_0011223344556677_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        assert_status(
            list_stores(&mut c, bad).await,
            Code::Unauthenticated,
            "API_KEY_INVALID",
        );
    }
    // The seeded terminal key may not administrate.
    assert_status(
        c.get_merchant(authed(gw::GetMerchantRequest {}, &m.terminal_key))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED_KEY_SCOPE",
    );
}

async fn merchants_never_see_each_others_records(suite: TestSuite) {
    let a = suite.seed_merchant("m-a").await;
    let b = suite.seed_merchant("m-b").await;
    let mut c = admin(&suite);
    let a_store = create_store(&mut c, &a.admin_key, "s-1", "A's second").await;
    // The same request id at another merchant is another request.
    let b_store = create_store(&mut c, &b.admin_key, "s-1", "B's second").await;
    assert_ne!(a_store.store_id, b_store.store_id);

    let bk = b.admin_key.as_str();
    for store_id in [&a.store_id, &a_store.store_id] {
        assert_status(
            c.get_store(authed(
                gw::GetStoreRequest {
                    store_id: store_id.clone(),
                },
                bk,
            ))
            .await,
            Code::NotFound,
            "STORE_NOT_FOUND",
        );
    }
    assert_status(
        c.update_store(authed(
            gw::UpdateStoreRequest {
                request_id: "u-1".into(),
                store: Some(gw::Store {
                    store_id: a.store_id.clone(),
                    name: "taken over".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["name".into()],
                }),
            },
            bk,
        ))
        .await,
        Code::NotFound,
        "STORE_NOT_FOUND",
    );
    assert_status(
        c.create_terminal(authed(
            gw::CreateTerminalRequest {
                request_id: "t-1".into(),
                store_id: a.store_id.clone(),
                name: "intruder".into(),
                external_id: String::new(),
            },
            bk,
        ))
        .await,
        Code::NotFound,
        "STORE_NOT_FOUND",
    );
    assert_status(
        c.disable_terminal(authed(
            gw::DisableTerminalRequest {
                request_id: "d-1".into(),
                terminal_id: a.terminal_id.clone(),
            },
            bk,
        ))
        .await,
        Code::NotFound,
        "TERMINAL_NOT_FOUND",
    );
    assert_status(
        issue(&mut c, bk, "k-1", gw::KeyScope::Terminal, &a.terminal_id)
            .await
            .map(tonic::Response::new),
        Code::NotFound,
        "TERMINAL_NOT_FOUND",
    );
    assert_status(
        revoke(&mut c, bk, "r-1", &key_id_of(&a.terminal_key))
            .await
            .map(tonic::Response::new),
        Code::NotFound,
        "API_KEY_NOT_FOUND",
    );
    // A's records are untouched and B lists only its own.
    list_stores(&mut c, &a.terminal_key)
        .await
        .expect_err("a terminal key may not list stores");
    let b_stores: Vec<String> = list_stores(&mut c, bk)
        .await
        .unwrap()
        .into_inner()
        .stores
        .into_iter()
        .map(|s| s.store_id)
        .collect();
    assert!(b_stores.contains(&b_store.store_id) && b_stores.contains(&b.store_id));
    assert_eq!(b_stores.len(), 2);
    let b_keys = c
        .list_api_keys(authed(gw::ListApiKeysRequest::default(), bk))
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert!(b_keys.iter().all(|k| k.key_id != key_id_of(&a.admin_key)));
    let b_terminals = c
        .list_terminals(authed(gw::ListTerminalsRequest::default(), bk))
        .await
        .unwrap()
        .into_inner()
        .terminals;
    assert_eq!(b_terminals.len(), 1);
    assert_eq!(b_terminals[0].terminal_id, b.terminal_id);
}

async fn programs_are_applied_and_invalid_ones_refused(suite: TestSuite) {
    let m = suite.seed_merchant("m-prog").await;
    let key = m.admin_key.as_str();
    let mut c = admin(&suite);
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../rules-svc/programs/demo-cafe.yaml"
    ))
    .expect("the demo program");
    let program = rules_svc::document::from_yaml(&yaml).expect("a valid document");

    let apply = |rid: &str, program: rules_pb::Program| {
        authed(
            gw::ApplyProgramRequest {
                request_id: rid.into(),
                program: Some(program),
                activate_at: None,
                skip_activation: false,
                comment: "from the test".into(),
            },
            key,
        )
    };
    let applied = c
        .apply_program(apply("apply-1", program.clone()))
        .await
        .unwrap()
        .into_inner();
    let version = applied.version.clone().unwrap();
    assert_eq!(version.state, rules_pb::VersionState::Published as i32);
    assert!(applied.active_now);
    assert_eq!(
        applied.activation.as_ref().unwrap().version,
        version.version
    );
    // A retry answers the same; the active program is that version.
    let again = c
        .apply_program(apply("apply-1", program.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, applied);
    let active = c
        .get_active_program(authed(gw::GetActiveProgramRequest { at: None }, key))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(active.version, version.version);
    assert_eq!(active.program.unwrap().name, "Demo café");
    let versions = c
        .list_program_versions(authed(gw::ListProgramVersionsRequest::default(), key))
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert!(versions.iter().any(|v| v.version == version.version));
    let got = c
        .get_program_version(authed(
            gw::GetProgramVersionRequest {
                version: version.version,
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(got.version, version.version);

    // An invalid program: PROGRAM_INVALID with the path of the fault; Validate says why.
    let invalid = rules_svc::document::from_yaml(
        "name: broken\nrules:\n  - id: r1\n    name: too generous\n    discount_percent: {percent: \"150\"}\n",
    )
    .expect("parses");
    let status = assert_status(
        c.apply_program(apply("apply-2", invalid.clone())).await,
        Code::InvalidArgument,
        "PROGRAM_INVALID",
    );
    let fields = field_violations_of(&status);
    assert!(
        fields.iter().any(|(f, _)| f.starts_with("rules[0]")),
        "{fields:?}"
    );
    let report = c
        .validate_program(authed(
            gw::ValidateProgramRequest {
                source: Some(gw::validate_program_request::Source::Program(invalid)),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!report.valid);
    assert!(!report.violations.is_empty());

    // Step by step: a draft published but not activated leaves the active version alone.
    let draft = c
        .create_program_draft(authed(
            gw::CreateProgramDraftRequest {
                request_id: "draft-1".into(),
                source: Some(gw::create_program_draft_request::Source::Program(program)),
                comment: String::new(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(draft.state, rules_pb::VersionState::Draft as i32);
    let published = c
        .publish_program(authed(
            gw::PublishProgramRequest {
                request_id: "pub-1".into(),
                version: draft.version,
                etag: String::new(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(published.state, rules_pb::VersionState::Published as i32);
    let still = c
        .get_active_program(authed(gw::GetActiveProgramRequest { at: None }, key))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(still.version, version.version);

    // An anonymous preview of the receipt against the active program.
    let preview = c
        .preview_program(authed(
            gw::PreviewProgramRequest {
                lines: vec![kopilka_proto::types::BasketLine {
                    line_id: "1".into(),
                    product_id: "latte".into(),
                    unit_price: "600".into(),
                    quantity: "1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(preview.result.is_some(), "{preview:?}");
}

async fn tiers_and_categories_are_forwarded(suite: TestSuite) {
    let m = suite.seed_merchant("m-tiers-gw").await;
    let key = m.admin_key.as_str();
    let mut c = admin(&suite);
    let tier = |code: &str, rank: i32, default: bool| cards_pb::Tier {
        code: code.into(),
        name: code.to_lowercase(),
        rank,
        accrual_percent: "2".into(),
        discount_percent: "5".into(),
        max_redeem_share_percent: "30".into(),
        is_default: default,
        ..Default::default()
    };
    for (rid, t) in [
        ("t-basic", tier("BASIC", 0, true)),
        ("t-gold", tier("GOLD", 1, false)),
    ] {
        let out = c
            .upsert_tier(authed(
                gw::UpsertTierRequest {
                    request_id: rid.into(),
                    tier: Some(t),
                },
                key,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(out.created);
    }
    let codes: Vec<String> = c
        .list_tiers(authed(gw::ListTiersRequest {}, key))
        .await
        .unwrap()
        .into_inner()
        .tiers
        .into_iter()
        .map(|t| t.code)
        .collect();
    assert_eq!(codes, ["BASIC", "GOLD"]);
    // Stored under the caller's merchant in cards-svc.
    let in_cards = TierServiceClient::new(suite.channel(suite.addrs.cards))
        .list_tiers(cards_pb::ListTiersRequest {
            merchant_id: m.merchant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tiers;
    assert_eq!(in_cards.len(), 2);
    let deleted = c
        .delete_tier(authed(
            gw::DeleteTierRequest {
                request_id: "del-gold".into(),
                code: "GOLD".into(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.code, "GOLD");
    assert_eq!(
        c.list_tiers(authed(gw::ListTiersRequest {}, key))
            .await
            .unwrap()
            .into_inner()
            .tiers
            .len(),
        1
    );
    assert_status(
        c.list_tiers(authed(gw::ListTiersRequest {}, &m.terminal_key))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED_KEY_SCOPE",
    );

    let upserted = c
        .upsert_categories(authed(
            gw::UpsertCategoriesRequest {
                request_id: "cats-1".into(),
                categories: vec![
                    rules_pb::Category {
                        category_id: "coffee".into(),
                        name: "Coffee".into(),
                        parent_id: String::new(),
                    },
                    rules_pb::Category {
                        category_id: "sale".into(),
                        name: "Sale".into(),
                        parent_id: String::new(),
                    },
                ],
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upserted.created, 2);
    let listed = c
        .list_categories(authed(gw::ListCategoriesRequest::default(), key))
        .await
        .unwrap()
        .into_inner()
        .categories;
    assert_eq!(listed.len(), 2);

    // What is not served says so.
    let status = c
        .get_merchant_totals(authed(gw::GetMerchantTotalsRequest::default(), key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}
