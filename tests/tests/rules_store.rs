//! The program store behaves the same on SQLite and PostgreSQL: versions count up per merchant,
//! published versions are frozen, activations can be scheduled, merchants never see each other.

use chrono::{Duration, TimeZone, Utc};
use kopilka_runtime::{Db, Timestamp};
use kopilka_tests::TempPostgres;
use rules_svc::store::{Programs, StoreError};

fn at(minutes: i64) -> Timestamp {
    Timestamp::from(
        Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap() + Duration::minutes(minutes),
    )
}

async fn conformance(db: Db) {
    let programs = Programs::new(db);
    assert_eq!(programs.create_draft("m1", b"v1", at(0)).await.unwrap(), 1);
    assert_eq!(programs.create_draft("m1", b"v2", at(1)).await.unwrap(), 2);
    assert_eq!(
        programs.create_draft("m2", b"other", at(1)).await.unwrap(),
        1,
        "numbering is per merchant"
    );

    programs
        .update_draft("m1", 1, b"v1-edited", at(2))
        .await
        .unwrap();
    programs.publish("m1", 1, at(3)).await.unwrap();
    programs
        .publish("m1", 1, at(4))
        .await
        .expect("publishing twice changes nothing");
    let v1 = programs.version("m1", 1).await.unwrap();
    assert_eq!(
        (v1.status.as_str(), v1.document.as_slice()),
        ("published", &b"v1-edited"[..])
    );
    assert_eq!(v1.published_at, Some(at(3)));
    assert!(matches!(
        programs.update_draft("m1", 1, b"x", at(5)).await,
        Err(StoreError::Immutable)
    ));
    assert!(matches!(
        programs.version("m1", 9).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        programs.activate("m1", 2, at(5), at(5)).await,
        Err(StoreError::NotPublished)
    ));

    assert_eq!(programs.active_at("m1", at(10)).await.unwrap(), None);
    programs.activate("m1", 1, at(10), at(5)).await.unwrap();
    programs.publish("m1", 2, at(6)).await.unwrap();
    programs.activate("m1", 2, at(60), at(6)).await.unwrap(); // scheduled an hour later
    let version_at = |t| {
        let programs = programs.clone();
        async move {
            programs
                .active_at("m1", t)
                .await
                .unwrap()
                .map(|v| v.version)
        }
    };
    assert_eq!(version_at(at(9)).await, None);
    assert_eq!(version_at(at(10)).await, Some(1));
    assert_eq!(version_at(at(59)).await, Some(1));
    assert_eq!(version_at(at(60)).await, Some(2));
    assert_eq!(
        programs.active_at("m2", at(60)).await.unwrap(),
        None,
        "m2 sees nothing of m1"
    );
    assert_eq!(programs.count("m1").await.unwrap(), 2);
}

#[tokio::test]
async fn program_store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rules.db").display());
    conformance(Db::connect(&url, 4, rules_svc::MIGRATIONS).await.unwrap()).await;
}

#[tokio::test]
async fn program_store_on_postgres() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap();
    let url = pg.create_database("rules").await;
    conformance(Db::connect(&url, 4, rules_svc::MIGRATIONS).await.unwrap()).await;
}
