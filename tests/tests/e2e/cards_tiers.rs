//! cards-svc tiers through gRPC, on SQLite and on PostgreSQL + Redis: five tier definitions with
//! their percentages, the default tier given at registration, assignments by hand and by rule
//! (locks honoured) with their history, validation of definitions, deleting a tier in use; and
//! the tier cache: entries land in Redis, are hits on the next read, are never stale after a
//! definition or assignment changes, and Redis dying mid-test changes nothing but speed.
//!
//! Each scenario is one async fn run by two `#[tokio::test]`s, one per backend.

use std::time::{Duration, Instant};

use crate::cards_support::*;
use kopilka_proto::cards as pb;
use kopilka_tests::{on_both_backends, TestSuite};
use tonic::{Code, Status};

const M: &str = "m-tiers";

/// (code, name, rank, accrual %, discount %, max redeem share %, default)
const TIERS: [(&str, &str, i32, &str, &str, &str, bool); 5] = [
    ("NEW", "New", 0, "1", "3", "20", true),
    ("SILVER", "Silver", 1, "2", "5", "30", false),
    ("GOLD", "Gold", 2, "3", "7", "40", false),
    ("PLATINUM", "Platinum", 3, "4", "9", "50", false),
    ("VIP", "VIP", 4, "5", "10", "100", false),
];

fn tier(
    code: &str,
    name: &str,
    rank: i32,
    accrual: &str,
    discount: &str,
    share: &str,
    default: bool,
) -> pb::Tier {
    pb::Tier {
        code: code.into(),
        name: name.into(),
        rank,
        accrual_percent: accrual.into(),
        discount_percent: discount.into(),
        max_redeem_share_percent: share.into(),
        perks: vec![format!("{name} perk")],
        is_default: default,
        description: String::new(),
        updated_at: None,
    }
}

async fn upsert(c: &Cards, t: pb::Tier) -> Result<pb::UpsertTierResponse, Status> {
    c.tiers
        .clone()
        .upsert_tier(pb::UpsertTierRequest {
            merchant_id: M.into(),
            request_id: rid(),
            tier: Some(t),
        })
        .await
        .map(|r| r.into_inner())
}

/// Defines the five tiers.
async fn five_tiers(c: &Cards) {
    for (code, name, rank, accrual, discount, share, default) in TIERS {
        let stored = upsert(c, tier(code, name, rank, accrual, discount, share, default))
            .await
            .unwrap_or_else(|e| panic!("UpsertTier {code}: {e:?}"));
        assert!(stored.created, "{code}");
        assert!(stored.tier.unwrap().updated_at.is_some());
    }
}

async fn list_tiers(c: &Cards) -> Vec<pb::Tier> {
    c.tiers
        .clone()
        .list_tiers(pb::ListTiersRequest {
            merchant_id: M.into(),
        })
        .await
        .expect("ListTiers")
        .into_inner()
        .tiers
}

fn assign_request(
    customer: &str,
    code: &str,
    source: pb::TierSource,
    reason: &str,
    lock: bool,
) -> pb::AssignTierRequest {
    pb::AssignTierRequest {
        merchant_id: M.into(),
        request_id: rid(),
        customer_id: customer.into(),
        tier_code: code.into(),
        source: source as i32,
        reason: reason.into(),
        rule_id: if source == pb::TierSource::Rule {
            "rule-turnover".into()
        } else {
            String::new()
        },
        program_version: if source == pb::TierSource::Rule { 7 } else { 0 },
        lock,
        effective_at: None,
    }
}

async fn assign(c: &Cards, r: pb::AssignTierRequest) -> Result<pb::AssignTierResponse, Status> {
    c.tiers.clone().assign_tier(r).await.map(|r| r.into_inner())
}

async fn customer_tier(c: &Cards, customer: &str) -> pb::GetCustomerTierResponse {
    c.tiers
        .clone()
        .get_customer_tier(pb::GetCustomerTierRequest {
            merchant_id: M.into(),
            customer_id: customer.into(),
        })
        .await
        .expect("GetCustomerTier")
        .into_inner()
}

async fn history(
    c: &Cards,
    customer: &str,
    page_size: i32,
    page_token: &str,
) -> pb::GetTierHistoryResponse {
    c.tiers
        .clone()
        .get_tier_history(pb::GetTierHistoryRequest {
            merchant_id: M.into(),
            customer_id: customer.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .expect("GetTierHistory")
        .into_inner()
}

/// (tier code, discount %) as the checkout sees them for the customer holding `phone`.
async fn tier_at_checkout(c: &Cards, phone: &str) -> (String, String) {
    let found = lookup(c, M, raw(phone)).await.expect("LookupCustomer");
    let assigned = found
        .customer
        .unwrap()
        .tier
        .expect("a tier assignment")
        .tier_code;
    let tier = found.tier.expect("the tier's definition");
    assert_eq!(
        assigned, tier.code,
        "the assignment and the definition agree"
    );
    (tier.code, tier.discount_percent)
}

fn pair(code: &str, discount: &str) -> (String, String) {
    (code.to_owned(), discount.to_owned())
}

// ---- definitions and assignments --------------------------------------------------------------

/// Five tiers; the default one given at registration; a manual assignment with its reason; a
/// lock that makes rule assignments no-ops; the history newest first with source and reason.
async fn tiers_are_assigned_by_hand_and_by_rule_with_history(suite: TestSuite) {
    let c = Cards::new(&suite);
    five_tiers(&c).await;
    let listed = list_tiers(&c).await;
    assert_eq!(
        listed
            .iter()
            .map(|t| (t.code.as_str(), t.rank))
            .collect::<Vec<_>>(),
        TIERS.iter().map(|t| (t.0, t.2)).collect::<Vec<_>>(),
        "lowest rank first"
    );
    let gold = &listed[2];
    assert_eq!(
        (
            gold.accrual_percent.as_str(),
            gold.discount_percent.as_str(),
            gold.max_redeem_share_percent.as_str()
        ),
        ("3", "7", "40")
    );
    assert_eq!(gold.perks, vec!["Gold perk".to_owned()]);

    // The default tier at registration.
    let ivan = customer(&c, M, "+7 912 345 67 89", &[]).await;
    let id = ivan.customer_id.clone();
    let registered = ivan.tier.clone().expect("the default tier");
    assert_eq!(registered.tier_code, "NEW");
    assert_eq!(registered.source, pb::TierSource::Registration as i32);
    assert_eq!(registered.tier_rank, 0);
    assert_eq!(tier_at_checkout(&c, "+79123456789").await, pair("NEW", "3"));

    // By hand, with a reason.
    let request = assign_request(
        &id,
        "GOLD",
        pb::TierSource::Manual,
        "loyal since 2019",
        false,
    );
    let gold = assign(&c, request.clone()).await.expect("AssignTier");
    assert!(gold.changed);
    let a = gold.assignment.clone().unwrap();
    assert_eq!(
        (a.tier_code.as_str(), a.previous_tier_code.as_str()),
        ("GOLD", "NEW")
    );
    assert_eq!(
        (a.source, a.reason.as_str()),
        (pb::TierSource::Manual as i32, "loyal since 2019")
    );
    assert_eq!((a.tier_name.as_str(), a.tier_rank), ("Gold", 2));
    assert!(a.assigned_at.is_some() && !a.locked);
    assert_eq!(
        assign(&c, request).await.unwrap(),
        gold,
        "a retry gets the same answer"
    );
    assert_eq!(
        tier_at_checkout(&c, "+79123456789").await,
        pair("GOLD", "7")
    );
    // Assigning what the customer holds changes nothing.
    let same = assign(
        &c,
        assign_request(&id, "GOLD", pb::TierSource::Manual, "again", false),
    )
    .await
    .unwrap();
    assert!(!same.changed);

    // A rule may change an unlocked tier.
    let by_rule = assign(
        &c,
        assign_request(
            &id,
            "SILVER",
            pb::TierSource::Rule,
            "turnover dropped",
            false,
        ),
    )
    .await
    .unwrap();
    assert!(by_rule.changed);
    let a = by_rule.assignment.unwrap();
    assert_eq!(
        (a.tier_code.as_str(), a.source),
        ("SILVER", pb::TierSource::Rule as i32)
    );
    assert_eq!(
        (a.rule_id.as_str(), a.program_version),
        ("rule-turnover", 7)
    );

    // Locked by hand: rules are ignored.
    let locked = assign(
        &c,
        assign_request(
            &id,
            "PLATINUM",
            pb::TierSource::Manual,
            "VIP guest of the owner",
            true,
        ),
    )
    .await
    .unwrap();
    assert!(locked.changed && locked.assignment.as_ref().unwrap().locked);
    let ignored = assign(
        &c,
        assign_request(&id, "NEW", pb::TierSource::Rule, "turnover dropped", false),
    )
    .await
    .unwrap();
    assert!(!ignored.changed);
    assert_eq!(ignored.assignment.unwrap().tier_code, "PLATINUM");
    let now = customer_tier(&c, &id).await;
    assert_eq!(now.assignment.as_ref().unwrap().tier_code, "PLATINUM");
    assert_eq!(now.tier.as_ref().unwrap().discount_percent, "9");
    assert_eq!(
        tier_at_checkout(&c, "+79123456789").await,
        pair("PLATINUM", "9")
    );

    // The history, newest first, paged.
    let all = history(&c, &id, 0, "").await;
    assert_eq!(
        all.assignments
            .iter()
            .map(|a| (a.tier_code.as_str(), a.source, a.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (
                "PLATINUM",
                pb::TierSource::Manual as i32,
                "VIP guest of the owner"
            ),
            ("SILVER", pb::TierSource::Rule as i32, "turnover dropped"),
            ("GOLD", pb::TierSource::Manual as i32, "loyal since 2019"),
            (
                "NEW",
                pb::TierSource::Registration as i32,
                registered.reason.as_str()
            ),
        ]
    );
    assert!(all.next_page_token.is_empty());
    let first = history(&c, &id, 3, "").await;
    assert_eq!(first.assignments.len(), 3);
    let rest = history(&c, &id, 3, &first.next_page_token).await;
    assert_eq!(rest.assignments.len(), 1);
    assert_eq!(rest.assignments[0].tier_code, "NEW");

    // Refusals: no reason for a manual change, no source, an unknown tier or customer.
    let fields = violations(
        assign(
            &c,
            assign_request(&id, "VIP", pb::TierSource::Manual, " ", false),
        )
        .await,
    );
    assert_eq!(fields, vec!["reason".to_owned()]);
    let fields = violations(
        assign(
            &c,
            assign_request(&id, "VIP", pb::TierSource::Unspecified, "x", false),
        )
        .await,
    );
    assert_eq!(fields, vec!["source".to_owned()]);
    assert_eq!(
        reason(
            assign(
                &c,
                assign_request(&id, "DIAMOND", pb::TierSource::Manual, "x", false)
            )
            .await,
            Code::NotFound
        ),
        "TIER_NOT_FOUND"
    );
    assert_eq!(
        reason(
            assign(
                &c,
                assign_request("nobody", "VIP", pb::TierSource::Manual, "x", false)
            )
            .await,
            Code::NotFound
        ),
        "CUSTOMER_NOT_FOUND"
    );
    assert_eq!(
        history(&c, &id, 0, "").await.assignments.len(),
        4,
        "nothing recorded"
    );
}

/// Percentages outside 0..100 and bad codes are INVALID_ARGUMENT with the field; a taken rank is
/// TIER_RANK_TAKEN; a tier customers hold cannot be deleted (TIER_IN_USE); nothing changes on a
/// refusal. Moving the default tier changes what new customers get.
async fn tier_definitions_are_validated(suite: TestSuite) {
    let c = Cards::new(&suite);
    five_tiers(&c).await;
    let before = list_tiers(&c).await;
    let bad = [
        (
            tier("GOLD", "Gold", 2, "3", "101", "40", false),
            "tier.discount_percent",
        ),
        (
            tier("GOLD", "Gold", 2, "-1", "7", "40", false),
            "tier.accrual_percent",
        ),
        (
            tier("GOLD", "Gold", 2, "3", "7", "forty", false),
            "tier.max_redeem_share_percent",
        ),
        (
            tier("GOLD", "Gold", 2, "3", "100.01", "40", false),
            "tier.discount_percent",
        ),
        (tier("GO LD", "Gold", 2, "3", "7", "40", false), "tier.code"),
        (tier("", "Gold", 2, "3", "7", "40", false), "tier.code"),
        (tier("GOLD", "", 2, "3", "7", "40", false), "tier.name"),
    ];
    for (t, field) in bad {
        let fields = violations(upsert(&c, t).await);
        assert_eq!(fields, vec![field.to_owned()], "{field}");
    }
    // Two fields at once are both reported.
    let fields = violations(upsert(&c, tier("GOLD", "Gold", 2, "200", "300", "40", false)).await);
    assert_eq!(
        fields,
        vec![
            "tier.accrual_percent".to_owned(),
            "tier.discount_percent".to_owned()
        ]
    );
    // A rank another tier holds: TIER_RANK_TAKEN naming the rank and its tier.
    assert_eq!(
        refusal(
            upsert(&c, tier("DIAMOND", "Diamond", 4, "6", "12", "100", false)).await,
            Code::FailedPrecondition
        ),
        refused_with("TIER_RANK_TAKEN", &[("rank", "4"), ("tier_code", "VIP")])
    );
    assert_eq!(
        refusal(
            upsert(&c, tier("GOLD", "Gold", 3, "3", "7", "40", false)).await,
            Code::FailedPrecondition
        ),
        refused_with(
            "TIER_RANK_TAKEN",
            &[("rank", "3"), ("tier_code", "PLATINUM")]
        )
    );
    let after: Vec<_> = list_tiers(&c).await;
    assert_eq!(after, before, "refusals change nothing");

    // Replacing a tier keeps its code; 0 and 100 are in range.
    let replaced = upsert(&c, tier("GOLD", "Gold", 2, "0", "100", "0", false))
        .await
        .unwrap();
    assert!(!replaced.created);
    assert_eq!(list_tiers(&c).await[2].discount_percent, "100");

    // A tier in use cannot be deleted: Ivan holds GOLD, Olga the default NEW; Kira held
    // PLATINUM but was merged into Ivan, so PLATINUM is free.
    let ivan = customer(&c, M, "+7 912 345 67 89", &[]).await;
    assign(
        &c,
        assign_request(
            &ivan.customer_id,
            "GOLD",
            pb::TierSource::Manual,
            "promotion",
            false,
        ),
    )
    .await
    .unwrap();
    customer(&c, M, "+7 912 000 00 01", &[]).await;
    let kira = customer(&c, M, "+7 912 000 00 03", &[]).await;
    assign(
        &c,
        assign_request(
            &kira.customer_id,
            "PLATINUM",
            pb::TierSource::Manual,
            "promotion",
            false,
        ),
    )
    .await
    .unwrap();
    c.customers
        .clone()
        .merge_customers(pb::MergeCustomersRequest {
            merchant_id: M.into(),
            request_id: rid(),
            surviving_customer_id: ivan.customer_id.clone(),
            merged_customer_id: kira.customer_id.clone(),
        })
        .await
        .expect("MergeCustomers");
    let delete = |code: &str, request_id: String| {
        let mut client = c.tiers.clone();
        let code = code.to_owned();
        async move {
            client
                .delete_tier(pb::DeleteTierRequest {
                    merchant_id: M.into(),
                    request_id,
                    code,
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    assert_eq!(
        reason(delete("GOLD", rid()).await, Code::FailedPrecondition),
        "TIER_IN_USE"
    );
    assert_eq!(
        reason(delete("NEW", rid()).await, Code::FailedPrecondition),
        "TIER_IN_USE"
    );
    let request_id = rid();
    assert_eq!(delete("VIP", request_id.clone()).await.unwrap().code, "VIP");
    assert_eq!(
        delete("VIP", request_id).await.unwrap().code,
        "VIP",
        "a retry succeeds"
    );
    assert_eq!(
        reason(delete("VIP", rid()).await, Code::NotFound),
        "TIER_NOT_FOUND"
    );
    delete("PLATINUM", rid())
        .await
        .expect("a tier only a merged record held");
    assert_eq!(
        list_tiers(&c)
            .await
            .iter()
            .map(|t| t.code.as_str())
            .collect::<Vec<_>>(),
        vec!["NEW", "SILVER", "GOLD"]
    );
    assert_eq!(
        tier_at_checkout(&c, "+79123456789").await,
        pair("GOLD", "100")
    );
    // The rank is free again.
    upsert(&c, tier("DIAMOND", "Diamond", 4, "6", "12", "100", false))
        .await
        .unwrap();

    // Moving the default: new customers get SILVER; NEW is no longer the default.
    upsert(&c, tier("SILVER", "Silver", 1, "2", "5", "30", true))
        .await
        .unwrap();
    let defaults: Vec<String> = list_tiers(&c)
        .await
        .into_iter()
        .filter(|t| t.is_default)
        .map(|t| t.code)
        .collect();
    assert_eq!(defaults, vec!["SILVER".to_owned()]);
    let olga = customer(&c, M, "+7 912 000 00 02", &[]).await;
    assert_eq!(olga.tier.unwrap().tier_code, "SILVER");
    assert_eq!(
        tier_at_checkout(&c, "+79120000002").await,
        pair("SILVER", "5")
    );
}

// ---- the cache --------------------------------------------------------------------------------

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis")
}

async fn exists(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .expect("EXISTS")
        == 1
}

/// Redis's count of keys found by reads (GET / MGET).
async fn keyspace_hits(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("keyspace_hits:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("keyspace_hits in INFO stats")
}

/// The tier read at checkout goes through the cache (Redis on PostgreSQL, in-process on SQLite):
/// the entries named by the tiers' version and the customer's assignment number land in Redis
/// and are hits on the next lookup; a changed definition or assignment is seen at once; with
/// Redis killed mid-test, lookups and GetCustomerTier still answer correctly, changes included.
async fn the_tier_cache_is_never_stale(mut suite: TestSuite) {
    let c = Cards::new(&suite);
    five_tiers(&c).await;
    let ivan = customer(&c, M, "+7 912 345 67 89", &[]).await;
    let id = ivan.customer_id.clone();
    let phone = "8 (912) 345-67-89";
    assert_eq!(tier_at_checkout(&c, phone).await, pair("NEW", "3"));

    let mut kv = match &suite.redis {
        Some(r) => Some(redis_connection(&r.url()).await),
        None => None,
    };
    if let Some(conn) = kv.as_mut() {
        // Five definitions written: version 5; the registration's assignment: number 1.
        let tiers_key = format!("kopilka:cards:{M}:tiers:5");
        let assignment_key = format!("kopilka:cards:{M}:tier:{id}:1");
        assert!(
            exists(conn, &tiers_key).await,
            "{tiers_key} cached after a lookup"
        );
        assert!(
            exists(conn, &assignment_key).await,
            "{assignment_key} cached after a lookup"
        );
        let hits = keyspace_hits(conn).await;
        assert_eq!(tier_at_checkout(&c, phone).await, pair("NEW", "3"));
        assert!(
            keyspace_hits(conn).await >= hits + 2,
            "the second lookup reads both from Redis"
        );
    }

    // A changed definition is seen by the next read, whatever reads it.
    upsert(&c, tier("NEW", "New", 0, "1", "4", "20", true))
        .await
        .unwrap();
    assert_eq!(tier_at_checkout(&c, phone).await, pair("NEW", "4"));
    assert_eq!(
        customer_tier(&c, &id).await.tier.unwrap().discount_percent,
        "4"
    );
    let got = c
        .tiers
        .clone()
        .get_tier(pb::GetTierRequest {
            merchant_id: M.into(),
            code: "NEW".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tier
        .unwrap();
    assert_eq!(got.discount_percent, "4");
    if let Some(conn) = kv.as_mut() {
        assert!(exists(conn, &format!("kopilka:cards:{M}:tiers:6")).await);
        assert!(
            !exists(conn, &format!("kopilka:cards:{M}:tiers:5")).await,
            "the old name is dropped"
        );
    }

    // A changed assignment too.
    assign(
        &c,
        assign_request(&id, "GOLD", pb::TierSource::Manual, "promotion", false),
    )
    .await
    .unwrap();
    assert_eq!(tier_at_checkout(&c, phone).await, pair("GOLD", "7"));
    assert_eq!(
        customer_tier(&c, &id).await.assignment.unwrap().tier_code,
        "GOLD"
    );
    if let Some(conn) = kv.as_mut() {
        assert!(exists(conn, &format!("kopilka:cards:{M}:tier:{id}:2")).await);
        assert!(!exists(conn, &format!("kopilka:cards:{M}:tier:{id}:1")).await);
    }

    // Redis dies: reads fall back to the database, answers stay right.
    if let Some(r) = suite.redis.as_mut() {
        r.stop();
    }
    for _ in 0..3 {
        assert_eq!(tier_at_checkout(&c, phone).await, pair("GOLD", "7"));
        let t = customer_tier(&c, &id).await;
        assert_eq!(t.assignment.unwrap().tier_code, "GOLD");
        assert_eq!(t.tier.unwrap().discount_percent, "7");
    }
    // Changes while Redis is down are visible immediately.
    assign(
        &c,
        assign_request(&id, "VIP", pb::TierSource::Manual, "owner's friend", false),
    )
    .await
    .expect("AssignTier without Redis");
    assert_eq!(tier_at_checkout(&c, phone).await, pair("VIP", "10"));
    upsert(&c, tier("VIP", "VIP", 4, "5", "15", "100", false))
        .await
        .expect("UpsertTier without Redis");
    assert_eq!(tier_at_checkout(&c, phone).await, pair("VIP", "15"));
    let t = customer_tier(&c, &id).await;
    assert_eq!(t.assignment.unwrap().tier_code, "VIP");
    assert_eq!(t.tier.unwrap().discount_percent, "15");
    // New customers are served too.
    let olga = customer(&c, M, "+7 912 000 00 02", &[]).await;
    assert_eq!(olga.tier.unwrap().tier_code, "NEW");
    assert_eq!(tier_at_checkout(&c, "+79120000002").await, pair("NEW", "4"));

    // Redis back (empty, on the same address): once the pause after its failures is over,
    // cards-svc uses it again by itself — the current entries (definitions at version 7 after
    // the VIP change, Ivan's assignment number 3) are cached anew by the lookups.
    if let Some(r) = suite.redis.as_mut() {
        r.restart();
        let mut conn = redis_connection(&r.url()).await;
        let tiers_key = format!("kopilka:cards:{M}:tiers:7");
        let assignment_key = format!("kopilka:cards:{M}:tier:{id}:3");
        // A bound on waiting for the condition, not a claim about speed.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert_eq!(tier_at_checkout(&c, phone).await, pair("VIP", "15"));
            if exists(&mut conn, &tiers_key).await && exists(&mut conn, &assignment_key).await {
                break;
            }
            if Instant::now() >= deadline {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("kopilka:cards:*")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                panic!(
                    "cards-svc did not use Redis again: {tiers_key} and {assignment_key} \
                     expected, found {keys:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

on_both_backends!(
    tiers_are_assigned_by_hand_and_by_rule_with_history,
    tier_definitions_are_validated,
    the_tier_cache_is_never_stale,
);
