//! The rules-svc store behaves the same on SQLite and PostgreSQL: version numbers count up per
//! merchant and are never reused, published versions are frozen, activations at one instant
//! replace each other, the change feed counts per merchant, categories move up when their parent
//! goes, and merchants never see each other's rows.

use chrono::{DateTime, Duration, TimeZone, Utc};
use kopilka_runtime::{Db, Timestamp};
use kopilka_tests::TempPostgres;
use rules_svc::cache::Schedule;
use rules_svc::catalog_store::CategoryRow;
use rules_svc::store::{ActivationRow, Claim, Store, VersionRow, DRAFT};

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap() + Duration::minutes(minutes)
}

fn draft(merchant: &str, version: i64, document: &[u8]) -> VersionRow {
    VersionRow {
        merchant_id: merchant.into(),
        version,
        status: DRAFT.into(),
        document: document.to_vec(),
        etag: format!("e{version}"),
        fingerprint: String::new(),
        based_on_version: 0,
        comment: String::new(),
        created_by: String::new(),
        needs: None,
        created_at: Timestamp::from(at(0)),
        updated_at: Timestamp::from(at(0)),
        published_at: None,
    }
}

fn activation(id: &str, version: i64, minutes: i64) -> ActivationRow {
    ActivationRow {
        activation_id: id.into(),
        version,
        activate_at: Timestamp::from(at(minutes)),
        created_at: Timestamp::from(at(0)),
        requested_by: "test".into(),
    }
}

async fn conformance(db: Db) {
    let store = Store::new(db);

    // Numbering per merchant; a deleted draft's number is not handed out again.
    let mut tx = store.write().await.unwrap();
    for expected in 1..=2 {
        let v = tx.next_version("m1").await.unwrap();
        assert_eq!(v, expected);
        tx.insert_version(&draft("m1", v, b"doc")).await.unwrap();
    }
    assert_eq!(
        tx.next_version("m2").await.unwrap(),
        1,
        "numbering is per merchant"
    );
    tx.delete_draft("m1", 2).await.unwrap();
    assert_eq!(tx.next_version("m1").await.unwrap(), 3);
    tx.insert_version(&draft("m1", 3, b"three")).await.unwrap();
    tx.commit().await.unwrap();

    // Publishing freezes: a draft update no longer applies.
    let mut tx = store.write().await.unwrap();
    tx.publish("m1", 1, b"needs", at(1)).await.unwrap();
    let mut changed = draft("m1", 1, b"changed");
    changed.etag = "x".into();
    tx.update_draft(&changed).await.unwrap();
    let v1 = tx.version("m1", 1).await.unwrap().unwrap();
    assert!(v1.is_published());
    assert_eq!(v1.document, b"doc");
    assert_eq!(v1.needs.as_deref(), Some(&b"needs"[..]));
    assert_eq!(v1.published_at, Some(Timestamp::from(at(1))));
    assert_eq!(tx.version("m2", 1).await.unwrap(), None, "tenancy");
    assert_eq!(tx.lock_version("m1", 2).await.unwrap(), None, "deleted");

    // Listing newest first, by state, by keyset.
    let all: Vec<i64> = tx
        .list_versions("m1", None, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(all, [3, 1]);
    let drafts = tx.list_versions("m1", Some(DRAFT), None, 10).await.unwrap();
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].version, 3);
    assert_eq!(
        tx.list_versions("m1", None, Some(3), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Activations: the same instant replaces; the schedule reads in time order.
    tx.upsert_activation("m1", &activation("a1", 1, 10))
        .await
        .unwrap();
    tx.upsert_activation("m1", &activation("a2", 1, 60))
        .await
        .unwrap();
    tx.upsert_activation("m1", &activation("a3", 1, 60))
        .await
        .unwrap();
    let schedule = Schedule {
        activations: tx.activations("m1").await.unwrap(),
    };
    let ids: Vec<&str> = schedule
        .activations
        .iter()
        .map(|a| a.activation_id.as_str())
        .collect();
    assert_eq!(ids, ["a1", "a3"]);
    assert_eq!(tx.activation("m1", "a2").await.unwrap(), None);
    assert_eq!(schedule.at(at(9)), None);
    assert_eq!(
        schedule.at(at(59)).map(|a| a.activation_id.as_str()),
        Some("a1")
    );
    tx.delete_activation("m1", "a3").await.unwrap();
    assert_eq!(tx.activations("m1").await.unwrap().len(), 1);
    assert!(tx.activations("m2").await.unwrap().is_empty());

    // The change feed counts per merchant.
    assert_eq!(tx.record_change("m1", "activate", at(2)).await.unwrap(), 1);
    assert_eq!(tx.record_change("m1", "cancel", at(3)).await.unwrap(), 2);
    assert_eq!(tx.record_change("m2", "catalog", at(3)).await.unwrap(), 1);
    let mut heads = tx.changes_since(at(0)).await.unwrap();
    heads.sort();
    assert_eq!(heads, [("m1".to_owned(), 2), ("m2".to_owned(), 1)]);
    assert_eq!(tx.changes_since(at(4)).await.unwrap(), []);
    assert_eq!(
        tx.prune_changes(at(100)).await.unwrap(),
        1,
        "the newest row stays"
    );
    assert_eq!(tx.record_change("m1", "publish", at(5)).await.unwrap(), 3);

    // Idempotency records.
    assert_eq!(
        tx.claim_request("m1", "r1", "Op", b"h", at(0))
            .await
            .unwrap(),
        Claim::New
    );
    tx.finish_request("m1", "r1", b"answer").await.unwrap();
    assert_eq!(
        tx.claim_request("m1", "r1", "Op", b"h", at(0))
            .await
            .unwrap(),
        Claim::Done {
            operation: "Op".into(),
            request_hash: b"h".to_vec(),
            response: b"answer".to_vec()
        }
    );
    assert_eq!(
        tx.claim_request("m2", "r1", "Op", b"h", at(0))
            .await
            .unwrap(),
        Claim::New,
        "request ids are per merchant"
    );
    assert_eq!(tx.prune_idempotency(at(1)).await.unwrap(), 2);

    // Categories: children move up to the deleted category's parent.
    let cat = |id: &str, parent: &str| CategoryRow {
        category_id: id.into(),
        name: id.to_uppercase(),
        parent_id: parent.into(),
    };
    for c in [
        cat("drinks", ""),
        cat("coffee", "drinks"),
        cat("espresso", "coffee"),
    ] {
        tx.upsert_category("m1", &c, at(0)).await.unwrap();
    }
    let coffee = tx.category("m1", "coffee").await.unwrap().unwrap();
    tx.delete_category("m1", &coffee).await.unwrap();
    assert_eq!(
        tx.category("m1", "espresso").await.unwrap(),
        Some(cat("espresso", "drinks"))
    );
    let children = tx
        .list_categories("m1", Some("drinks"), None, 10)
        .await
        .unwrap();
    assert_eq!(children, [cat("espresso", "drinks")]);
    let page = tx
        .list_categories("m1", None, Some("drinks"), 10)
        .await
        .unwrap();
    assert_eq!(page, [cat("espresso", "drinks")]);
    assert!(tx.category_parents("m2").await.unwrap().is_empty());
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn rules_store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rules.db").display());
    conformance(Db::connect(&url, 4, rules_svc::MIGRATIONS).await.unwrap()).await;
}

#[tokio::test]
async fn rules_store_on_postgres() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap();
    let url = pg.create_database("rules").await;
    conformance(Db::connect(&url, 4, rules_svc::MIGRATIONS).await.unwrap()).await;
}
