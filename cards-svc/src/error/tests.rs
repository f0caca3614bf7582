//! Every refusal carries the ErrorInfo metadata errors.proto documents for its reason, produced
//! by the real operations on an in-memory SQLite database.

use std::collections::HashMap;
use std::time::Duration;

use kopilka_proto::cards as pb;
use kopilka_proto::types::{IdentifierInput, IdentifierKind};
use kopilka_proto::wkt::FieldMask;
use kopilka_runtime::Db;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::Error;
use crate::cache::TierCache;
use crate::cards::{Cards, Command};

const M: &str = "m1";

async fn cards() -> Cards {
    // One connection: every connection to `sqlite::memory:` is a database of its own.
    let db = Db::connect("sqlite::memory:", 1, crate::MIGRATIONS)
        .await
        .unwrap();
    let cache = TierCache::open(None, true, Duration::from_secs(60)).unwrap();
    Cards::new(db, cache, None)
}

/// The code, ErrorInfo reason and metadata of the status `result`'s error becomes.
fn refused<T: std::fmt::Debug>(
    result: Result<T, Error>,
) -> (Code, String, HashMap<String, String>) {
    let status = Status::from(result.expect_err("a refusal"));
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.domain, "kopilka");
    (status.code(), info.reason, info.metadata)
}

fn expect(
    code: Code,
    reason: &str,
    metadata: &[(&str, &str)],
) -> (Code, String, HashMap<String, String>) {
    let metadata = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (code, reason.to_owned(), metadata)
}

fn input(raw: &str, hint: IdentifierKind) -> IdentifierInput {
    IdentifierInput {
        raw: raw.to_owned(),
        kind_hint: hint as i32,
    }
}

fn card(raw: &str) -> IdentifierInput {
    input(raw, IdentifierKind::CardNumber)
}

async fn create(
    c: &Cards,
    request_id: &str,
    phone: &str,
    identifiers: &[IdentifierInput],
) -> Result<String, Error> {
    let r = pb::CreateCustomerRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        profile: Some(pb::CustomerProfile {
            phone: phone.to_owned(),
            ..Default::default()
        }),
        identifiers: identifiers.to_vec(),
        ..Default::default()
    };
    let created: pb::CreateCustomerResponse = c
        .mutate(M, &r.request_id, &r, Command::CreateCustomer(&r))
        .await?;
    Ok(created.customer.unwrap().customer_id)
}

async fn lookup(c: &Cards, input: IdentifierInput) -> Result<pb::LookupCustomerResponse, Error> {
    c.lookup_customer(&pb::LookupCustomerRequest {
        merchant_id: M.to_owned(),
        input: Some(input),
        include_referral_chain: false,
    })
    .await
}

async fn add(
    c: &Cards,
    request_id: &str,
    customer: &str,
    input: IdentifierInput,
) -> Result<pb::AddIdentifierResponse, Error> {
    let r = pb::AddIdentifierRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        customer_id: customer.to_owned(),
        input: Some(input),
        first_card_only: false,
    };
    c.mutate(M, &r.request_id, &r, Command::AddIdentifier(&r))
        .await
}

async fn block(
    c: &Cards,
    request_id: &str,
    raw: &str,
    customer: &str,
    reason: pb::BlockReason,
) -> Result<pb::BlockIdentifierResponse, Error> {
    let r = pb::BlockIdentifierRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        input: Some(card(raw)),
        customer_id: customer.to_owned(),
        reason: reason as i32,
        comment: String::new(),
    };
    c.mutate(M, &r.request_id, &r, Command::BlockIdentifier(&r))
        .await
}

async fn merge_records(c: &Cards, request_id: &str, surviving: &str, merged: &str) {
    let r = pb::MergeCustomersRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        surviving_customer_id: surviving.to_owned(),
        merged_customer_id: merged.to_owned(),
    };
    // Only the records: there is no ledger here.
    let _: pb::MergeCustomersResponse = c
        .mutate(M, &r.request_id, &r, Command::MergeCustomers(&r))
        .await
        .unwrap();
}

fn merge(request_id: &str, surviving: &str, merged: &str) -> pb::MergeCustomersRequest {
    pb::MergeCustomersRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        surviving_customer_id: surviving.to_owned(),
        merged_customer_id: merged.to_owned(),
    }
}

#[tokio::test]
async fn card_not_found_names_the_kind_and_whether_a_phone_could_register() {
    use IdentifierKind::{ContactlessUid, Phone, Unspecified};
    let c = cards().await;
    let not_found = |kind: &str, can_register: &str| {
        expect(
            Code::NotFound,
            "CARD_NOT_FOUND",
            &[("kind", kind), ("can_register", can_register)],
        )
    };
    let rows = [
        (
            input("+7 912 345-67-89", Unspecified),
            not_found("IDENTIFIER_KIND_PHONE", "true"),
        ),
        (
            input("89123456789", Phone),
            not_found("IDENTIFIER_KIND_PHONE", "true"),
        ),
        // A bare number reads as a card first, and also as a phone.
        (
            input("9123456789", Unspecified),
            not_found("IDENTIFIER_KIND_CARD_NUMBER", "true"),
        ),
        (
            input("AB1234", Unspecified),
            not_found("IDENTIFIER_KIND_CARD_NUMBER", "false"),
        ),
        (
            card("9123456789"),
            not_found("IDENTIFIER_KIND_CARD_NUMBER", "false"),
        ),
        (
            input("04:A1:B2:C3", ContactlessUid),
            not_found("IDENTIFIER_KIND_CONTACTLESS_UID", "false"),
        ),
    ];
    for (input, want) in rows {
        assert_eq!(refused(lookup(&c, input.clone()).await), want, "{input:?}");
    }
    // Held by another customer than the one named: not found either.
    create(&c, "r-1", "", &[card("AB1234")]).await.unwrap();
    assert_eq!(
        refused(block(&c, "r-2", "AB1234", "someone-else", pb::BlockReason::Lost).await),
        not_found("IDENTIFIER_KIND_CARD_NUMBER", "false")
    );
}

#[tokio::test]
async fn card_blocked_names_the_reason_and_whether_the_card_was_replaced() {
    let c = cards().await;
    create(&c, "r-1", "", &[card("AB1234"), card("CD5678")])
        .await
        .unwrap();
    block(&c, "r-2", "AB1234", "", pb::BlockReason::Stolen)
        .await
        .unwrap();
    assert_eq!(
        refused(lookup(&c, card("AB1234")).await),
        expect(
            Code::FailedPrecondition,
            "CARD_BLOCKED",
            &[
                ("block_reason", "BLOCK_REASON_STOLEN"),
                ("replaced", "false")
            ],
        )
    );
    let r = pb::ReplaceCardRequest {
        merchant_id: M.to_owned(),
        request_id: "r-3".to_owned(),
        old_card: Some(card("CD5678")),
        new_card: Some(card("EF9012")),
        reason: 0,
        comment: String::new(),
    };
    let _: pb::ReplaceCardResponse = c
        .mutate(M, &r.request_id, &r, Command::ReplaceCard(&r))
        .await
        .unwrap();
    assert_eq!(
        refused(lookup(&c, card("CD5678")).await),
        expect(
            Code::FailedPrecondition,
            "CARD_BLOCKED",
            &[("block_reason", "BLOCK_REASON_LOST"), ("replaced", "true")],
        )
    );
    assert!(lookup(&c, card("EF9012")).await.is_ok());
}

#[tokio::test]
async fn identifier_taken_names_the_kind_and_the_owner() {
    let c = cards().await;
    let owner = create(&c, "r-1", "+79123456789", &[card("AB1234")])
        .await
        .unwrap();
    let taken = |kind: &str| {
        expect(
            Code::AlreadyExists,
            "IDENTIFIER_TAKEN",
            &[("kind", kind), ("customer_id", owner.as_str())],
        )
    };
    assert_eq!(
        refused(create(&c, "r-2", "", &[card("ab-1234")]).await),
        taken("IDENTIFIER_KIND_CARD_NUMBER")
    );
    assert_eq!(
        refused(create(&c, "r-3", "8 (912) 345-67-89", &[]).await),
        taken("IDENTIFIER_KIND_PHONE")
    );
    let other = create(&c, "r-4", "", &[card("CD5678")]).await.unwrap();
    assert_eq!(
        refused(add(&c, "r-5", &other, card("AB1234")).await),
        taken("IDENTIFIER_KIND_CARD_NUMBER")
    );
}

#[tokio::test]
async fn unreadable_input_names_the_kind_it_was_read_as() {
    use IdentifierKind::{BarcodeEan13, ContactlessUid, Unspecified};
    let c = cards().await;
    let unreadable =
        |reason: &str, kind: &str| expect(Code::InvalidArgument, reason, &[("kind", kind)]);
    let rows = [
        (
            input("4006381333932", BarcodeEan13),
            unreadable("INVALID_CHECKSUM", "IDENTIFIER_KIND_BARCODE_EAN13"),
        ),
        (
            input("zz", ContactlessUid),
            unreadable("INVALID_IDENTIFIER", "IDENTIFIER_KIND_CONTACTLESS_UID"),
        ),
        (
            input("+7 abc", Unspecified),
            unreadable("INVALID_IDENTIFIER", "IDENTIFIER_KIND_PHONE"),
        ),
        (
            input("%B123", Unspecified),
            unreadable("INVALID_IDENTIFIER", "IDENTIFIER_KIND_MAGSTRIPE"),
        ),
        (
            input("!!", Unspecified),
            unreadable("INVALID_IDENTIFIER", "IDENTIFIER_KIND_UNSPECIFIED"),
        ),
        (
            IdentifierInput {
                raw: "1234".to_owned(),
                kind_hint: 99,
            },
            unreadable("INVALID_IDENTIFIER", "IDENTIFIER_KIND_UNSPECIFIED"),
        ),
    ];
    for (input, want) in rows {
        assert_eq!(refused(lookup(&c, input.clone()).await), want, "{input:?}");
    }
    assert_eq!(
        refused(create(&c, "r-1", "12", &[]).await),
        unreadable("INVALID_IDENTIFIER", "IDENTIFIER_KIND_PHONE")
    );

    // A merchant whose cards are 16 digits starting 77 with a Luhn check digit.
    let r = pb::UpdateCardsSettingsRequest {
        merchant_id: M.to_owned(),
        request_id: "r-2".to_owned(),
        settings: Some(pb::CardsSettings {
            card_number_formats: vec![pb::CardNumberFormat {
                name: "plastic".to_owned(),
                pattern: "77[0-9]{14}".to_owned(),
                checksum: pb::CardChecksum::Luhn as i32,
            }],
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["card_number_formats".to_owned()],
        }),
    };
    let _: pb::UpdateCardsSettingsResponse = c
        .mutate(M, &r.request_id, &r, Command::UpdateSettings(&r))
        .await
        .unwrap();
    assert_eq!(
        refused(lookup(&c, input("7700 0000 0000 0001", Unspecified)).await),
        unreadable("INVALID_CHECKSUM", "IDENTIFIER_KIND_CARD_NUMBER")
    );
    // Reads only as a phone, which is not attached without the hint.
    let customer = create(&c, "r-3", "+79123456789", &[]).await.unwrap();
    assert_eq!(
        refused(add(&c, "r-4", &customer, input("89001234567", Unspecified)).await),
        unreadable("INVALID_IDENTIFIER", "IDENTIFIER_KIND_PHONE")
    );
}

#[tokio::test]
async fn ambiguous_input_names_the_kinds_it_matched_as() {
    let c = cards().await;
    create(&c, "r-1", "", &[card("9123456789")]).await.unwrap();
    create(&c, "r-2", "+79123456789", &[]).await.unwrap();
    assert_eq!(
        refused(lookup(&c, input("9123456789", IdentifierKind::Unspecified)).await),
        expect(
            Code::FailedPrecondition,
            "IDENTIFIER_AMBIGUOUS",
            &[("kinds", "IDENTIFIER_KIND_CARD_NUMBER,IDENTIFIER_KIND_PHONE")],
        )
    );
}

#[tokio::test]
async fn merge_refusals_name_the_survivor_the_conflict_and_the_dependency() {
    let c = cards().await;
    let a = create(&c, "r-1", "", &[card("AA0001")]).await.unwrap();
    let b = create(&c, "r-2", "", &[card("BB0002")]).await.unwrap();
    let d = create(&c, "r-3", "", &[card("DD0004")]).await.unwrap();
    merge_records(&c, "r-4", &a, &b).await;
    assert_eq!(
        refused(add(&c, "r-5", &b, card("CC0003")).await),
        expect(
            Code::FailedPrecondition,
            "CUSTOMER_MERGED",
            &[("surviving_customer_id", a.as_str())],
        )
    );
    let conflict = |detail: &str| {
        expect(
            Code::FailedPrecondition,
            "MERGE_CONFLICT",
            &[("detail", detail)],
        )
    };
    assert_eq!(
        refused(c.merge(&merge("r-6", &a, &a)).await),
        conflict("same_customer")
    );
    assert_eq!(
        refused(c.merge(&merge("r-7", &b, &d)).await),
        conflict("already_merged")
    );
    assert_eq!(
        refused(c.merge(&merge("r-8", &d, &a)).await),
        expect(
            Code::Unavailable,
            "DEPENDENCY_UNAVAILABLE",
            &[("dependency", "ledger")],
        )
    );
}

#[tokio::test]
async fn tier_refusals_name_the_tier() {
    let c = cards().await;
    let customer = create(&c, "r-1", "", &[card("AB1234")]).await.unwrap();
    let assign = |request_id: &str, code: &str| pb::AssignTierRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        customer_id: customer.clone(),
        tier_code: code.to_owned(),
        source: pb::TierSource::Manual as i32,
        reason: "test".to_owned(),
        ..Default::default()
    };
    let delete = |request_id: &str, code: &str| pb::DeleteTierRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        code: code.to_owned(),
    };
    let not_found = expect(Code::NotFound, "TIER_NOT_FOUND", &[("tier_code", "GOLD")]);
    let r = assign("r-2", "GOLD");
    let assigned: Result<pb::AssignTierResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::AssignTier(&r))
        .await;
    assert_eq!(refused(assigned), not_found);
    let r = delete("r-3", "GOLD");
    let deleted: Result<pb::DeleteTierResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::DeleteTier(&r))
        .await;
    assert_eq!(refused(deleted), not_found);
    let got = c
        .get_tier(&pb::GetTierRequest {
            merchant_id: M.to_owned(),
            code: "GOLD".to_owned(),
        })
        .await;
    assert_eq!(refused(got), not_found);

    let r = pb::UpsertTierRequest {
        merchant_id: M.to_owned(),
        request_id: "r-4".to_owned(),
        tier: Some(pb::Tier {
            code: "GOLD".to_owned(),
            name: "Gold".to_owned(),
            rank: 1,
            ..Default::default()
        }),
    };
    let _: pb::UpsertTierResponse = c
        .mutate(M, &r.request_id, &r, Command::UpsertTier(&r))
        .await
        .unwrap();
    let r = assign("r-5", "GOLD");
    let _: pb::AssignTierResponse = c
        .mutate(M, &r.request_id, &r, Command::AssignTier(&r))
        .await
        .unwrap();
    let r = delete("r-6", "GOLD");
    let deleted: Result<pb::DeleteTierResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::DeleteTier(&r))
        .await;
    assert_eq!(
        refused(deleted),
        expect(
            Code::FailedPrecondition,
            "TIER_IN_USE",
            &[("tier_code", "GOLD")],
        )
    );
}

#[tokio::test]
async fn a_reused_request_id_is_named_and_other_refusals_carry_no_metadata() {
    let c = cards().await;
    let customer = create(&c, "r-1", "", &[card("AB1234")]).await.unwrap();
    assert_eq!(
        refused(create(&c, "r-1", "", &[card("CD5678")]).await),
        expect(
            Code::FailedPrecondition,
            "IDEMPOTENCY_KEY_REUSED",
            &[("request_id", "r-1")],
        )
    );
    let r = pb::UpdateCustomerRequest {
        merchant_id: M.to_owned(),
        request_id: "r-2".to_owned(),
        customer_id: customer.clone(),
        profile: Some(pb::CustomerProfile {
            first_name: "Ann".to_owned(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["first_name".to_owned()],
        }),
        etag: "999".to_owned(),
        external_id: String::new(),
    };
    let updated: Result<pb::UpdateCustomerResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::UpdateCustomer(&r))
        .await;
    assert_eq!(
        refused(updated),
        expect(Code::Aborted, "CONCURRENT_MODIFICATION", &[])
    );
    let r = pb::SetReferrerRequest {
        merchant_id: M.to_owned(),
        request_id: "r-3".to_owned(),
        customer_id: customer.clone(),
        referrer: Some(input("+79001234567", IdentifierKind::Unspecified)),
    };
    let set: Result<pb::SetReferrerResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::SetReferrer(&r))
        .await;
    assert_eq!(
        refused(set),
        expect(Code::NotFound, "REFERRER_NOT_FOUND", &[])
    );
    let r = pb::RevokeRegistrationLinkRequest {
        merchant_id: M.to_owned(),
        request_id: "r-4".to_owned(),
        link_id: "nope".to_owned(),
    };
    let revoked: Result<pb::RevokeRegistrationLinkResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::RevokeLink(&r))
        .await;
    assert_eq!(
        refused(revoked),
        expect(Code::NotFound, "LINK_NOT_FOUND", &[("link_id", "nope")])
    );
    let r = pb::AddIdentifierRequest {
        merchant_id: M.to_owned(),
        request_id: "r-5".to_owned(),
        customer_id: "nobody".to_owned(),
        input: Some(card("CD5678")),
        first_card_only: false,
    };
    let added: Result<pb::AddIdentifierResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::AddIdentifier(&r))
        .await;
    assert_eq!(
        refused(added),
        expect(Code::NotFound, "CUSTOMER_NOT_FOUND", &[])
    );
}

/// The field paths of the BadRequest the status of `result`'s error carries.
fn fields<T: std::fmt::Debug>(result: &Result<T, Error>) -> Vec<String> {
    match result {
        Err(Error::Invalid(v)) => v.fields().iter().map(|(f, _)| f.clone()).collect(),
        other => panic!("not field violations: {other:?}"),
    }
}

fn history(customer: &str, page_size: i32, page_token: &str) -> pb::GetTierHistoryRequest {
    pb::GetTierHistoryRequest {
        merchant_id: M.to_owned(),
        customer_id: customer.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
    }
}

fn list(page_size: i32, page_token: &str) -> pb::ListCustomersRequest {
    pb::ListCustomersRequest {
        merchant_id: M.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
        ..Default::default()
    }
}

fn limit_exceeded(field: &str, limit: &str) -> (Code, String, HashMap<String, String>) {
    expect(
        Code::InvalidArgument,
        "LIMIT_EXCEEDED",
        &[("field", field), ("limit", limit)],
    )
}

#[tokio::test]
async fn size_limits_name_the_field_and_the_limit() {
    let c = cards().await;
    let customer = create(&c, "r-1", "", &[card("AB1234")]).await.unwrap();
    let long = "x".repeat(129);

    // Ids: 128 characters.
    let got = c
        .get_customer(&pb::GetCustomerRequest {
            merchant_id: M.to_owned(),
            customer_id: long.clone(),
        })
        .await;
    assert_eq!(fields(&got), ["customer_id"]);
    assert_eq!(refused(got), limit_exceeded("customer_id", "128"));
    let r = pb::AddIdentifierRequest {
        merchant_id: M.to_owned(),
        request_id: long.clone(),
        customer_id: customer.clone(),
        input: Some(card("CD5678")),
        first_card_only: false,
    };
    let added: Result<pb::AddIdentifierResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::AddIdentifier(&r))
        .await;
    assert_eq!(refused(added), limit_exceeded("request_id", "128"));

    // Page sizes: 100 for a tier history, 1000 for a customer list; 0 is the default.
    let page = c.tier_history(&history(&customer, 101, "")).await;
    assert_eq!(fields(&page), ["page_size"]);
    assert_eq!(refused(page), limit_exceeded("page_size", "100"));
    assert!(c.tier_history(&history(&customer, 100, "")).await.is_ok());
    assert!(c.tier_history(&history(&customer, 0, "")).await.is_ok());
    assert_eq!(
        refused(c.list_customers(&list(1001, "")).await),
        limit_exceeded("page_size", "1000")
    );
    assert!(c.list_customers(&list(1000, "")).await.is_ok());
    // A negative size is no limit, just wrong.
    assert_eq!(
        refused(c.tier_history(&history(&customer, -1, "")).await),
        expect(Code::InvalidArgument, "VALIDATION_FAILED", &[])
    );

    // Text, counts of a request's entries, raw identifier input.
    let mut profile = pb::CustomerProfile {
        first_name: "x".repeat(101),
        ..Default::default()
    };
    let update = |request_id: &str, profile: &pb::CustomerProfile| pb::UpdateCustomerRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        customer_id: customer.clone(),
        profile: Some(profile.clone()),
        update_mask: Some(FieldMask {
            paths: vec!["*".to_owned()],
        }),
        etag: String::new(),
        external_id: String::new(),
    };
    let r = update("r-2", &profile);
    let updated: Result<pb::UpdateCustomerResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::UpdateCustomer(&r))
        .await;
    assert_eq!(
        refused(updated),
        limit_exceeded("profile.first_name", "100")
    );
    profile.first_name.clear();
    profile.attributes = (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let r = update("r-3", &profile);
    let updated: Result<pb::UpdateCustomerResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::UpdateCustomer(&r))
        .await;
    assert_eq!(refused(updated), limit_exceeded("profile.attributes", "32"));
    let eleven: Vec<_> = (0..11).map(|i| card(&format!("NEW{i:04}"))).collect();
    assert_eq!(
        refused(create(&c, "r-4", "", &eleven).await),
        limit_exceeded("identifiers", "10")
    );
    assert_eq!(
        refused(lookup(&c, card(&"1".repeat(257))).await),
        limit_exceeded("input.raw", "256")
    );
    // A registration time beyond the clock skew.
    let r = pb::CreateCustomerRequest {
        merchant_id: M.to_owned(),
        request_id: "r-5".to_owned(),
        identifiers: vec![card("EF9012")],
        registered_at: Some(crate::cards::timestamp(
            chrono::Utc::now() + chrono::Duration::minutes(10),
        )),
        ..Default::default()
    };
    let created: Result<pb::CreateCustomerResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::CreateCustomer(&r))
        .await;
    assert_eq!(
        refused(created),
        expect(
            Code::InvalidArgument,
            "TIMESTAMP_IN_FUTURE",
            &[("field", "registered_at")]
        )
    );
}

#[tokio::test]
async fn a_page_token_this_service_did_not_issue_is_page_token_invalid() {
    let c = cards().await;
    let customer = create(&c, "r-1", "", &[card("AB1234")]).await.unwrap();
    let invalid = expect(Code::InvalidArgument, "PAGE_TOKEN_INVALID", &[]);
    for token in ["abc", "-5", "1|2"] {
        let page = c.tier_history(&history(&customer, 0, token)).await;
        assert_eq!(fields(&page), ["page_token"], "{token}");
        assert_eq!(refused(page), invalid, "{token}");
    }
    for token in ["abc", "12", "x|id"] {
        let page = c.list_customers(&list(0, token)).await;
        assert_eq!(fields(&page), ["page_token"], "{token}");
        assert_eq!(refused(page), invalid, "{token}");
    }
    // The tokens it issues work.
    let first = c.list_customers(&list(1, "")).await.unwrap();
    assert!(!first.next_page_token.is_empty());
    assert!(c
        .list_customers(&list(1, &first.next_page_token))
        .await
        .is_ok());
}

#[tokio::test]
async fn an_external_id_another_customer_has_is_identifier_taken() {
    let c = cards().await;
    let r = pb::CreateCustomerRequest {
        merchant_id: M.to_owned(),
        request_id: "r-1".to_owned(),
        identifiers: vec![card("AB1234")],
        external_id: "crm-1".to_owned(),
        ..Default::default()
    };
    let owner = c
        .mutate::<pb::CreateCustomerResponse>(M, &r.request_id, &r, Command::CreateCustomer(&r))
        .await
        .unwrap()
        .customer
        .unwrap()
        .customer_id;
    let taken = expect(
        Code::AlreadyExists,
        "IDENTIFIER_TAKEN",
        &[("field", "external_id"), ("customer_id", owner.as_str())],
    );
    let r = pb::CreateCustomerRequest {
        request_id: "r-2".to_owned(),
        identifiers: vec![card("CD5678")],
        ..r
    };
    let created: Result<pb::CreateCustomerResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::CreateCustomer(&r))
        .await;
    assert_eq!(refused(created), taken);

    let other = create(&c, "r-3", "", &[card("CD5678")]).await.unwrap();
    let update = |request_id: &str, customer: &str| pb::UpdateCustomerRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        customer_id: customer.to_owned(),
        external_id: "crm-1".to_owned(),
        ..Default::default()
    };
    let r = update("r-4", &other);
    let updated: Result<pb::UpdateCustomerResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::UpdateCustomer(&r))
        .await;
    assert_eq!(refused(updated), taken);
    // The owner setting its own external id again is no conflict.
    let r = update("r-5", &owner);
    let updated: Result<pb::UpdateCustomerResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::UpdateCustomer(&r))
        .await;
    assert!(updated.is_ok(), "{updated:?}");
}

#[tokio::test]
async fn a_customer_with_20_identifiers_has_reached_the_limit() {
    let c = cards().await;
    let first: Vec<_> = (0..10).map(|i| card(&format!("CARD{i:04}"))).collect();
    let customer = create(&c, "r-0", "", &first).await.unwrap();
    for i in 10..20 {
        add(
            &c,
            &format!("r-{i}"),
            &customer,
            card(&format!("CARD{i:04}")),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        refused(add(&c, "r-20", &customer, card("CARD0020")).await),
        expect(
            Code::FailedPrecondition,
            "LIMIT_EXCEEDED",
            &[("field", "identifiers"), ("limit", "20")],
        )
    );
    // One it holds already is no addition.
    assert!(add(&c, "r-21", &customer, card("CARD0003")).await.is_ok());
}

fn upsert_tier(request_id: &str, code: &str, rank: i32) -> pb::UpsertTierRequest {
    pb::UpsertTierRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        tier: Some(pb::Tier {
            code: code.to_owned(),
            name: code.to_owned(),
            rank,
            ..Default::default()
        }),
    }
}

async fn upsert(c: &Cards, r: &pb::UpsertTierRequest) -> Result<pb::UpsertTierResponse, Error> {
    c.mutate(M, &r.request_id, r, Command::UpsertTier(r)).await
}

#[tokio::test]
async fn a_taken_rank_names_its_tier() {
    let c = cards().await;
    upsert(&c, &upsert_tier("r-1", "GOLD", 2)).await.unwrap();
    assert_eq!(
        refused(upsert(&c, &upsert_tier("r-2", "SILVER", 2)).await),
        expect(
            Code::FailedPrecondition,
            "TIER_RANK_TAKEN",
            &[("rank", "2"), ("tier_code", "GOLD")],
        )
    );
    // A tier keeps its own rank.
    assert!(upsert(&c, &upsert_tier("r-3", "GOLD", 2)).await.is_ok());
}

#[tokio::test]
async fn a_merchant_with_50_tiers_has_reached_the_limit() {
    let c = cards().await;
    for rank in 1..=50 {
        upsert(
            &c,
            &upsert_tier(&format!("r-{rank}"), &format!("T{rank}"), rank),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        refused(upsert(&c, &upsert_tier("r-51", "T51", 51)).await),
        expect(
            Code::FailedPrecondition,
            "LIMIT_EXCEEDED",
            &[("field", "tiers"), ("limit", "50")],
        )
    );
    // Replacing one of them is no addition.
    assert!(upsert(&c, &upsert_tier("r-52", "T7", 70)).await.is_ok());
}

/// Page tokens are keyset positions: a row written between two pages neither repeats a row on
/// the next page nor skips one (an offset would shift by the new row).
#[tokio::test]
async fn pages_do_not_shift_when_rows_are_added_between_them() {
    let c = cards().await;
    let customer = create(&c, "r-1", "", &[card("AB1234")]).await.unwrap();
    for (rank, code) in [(1, "SILVER"), (2, "GOLD")] {
        let r = pb::UpsertTierRequest {
            merchant_id: M.to_owned(),
            request_id: format!("tier-{code}"),
            tier: Some(pb::Tier {
                code: code.to_owned(),
                name: code.to_owned(),
                rank,
                ..Default::default()
            }),
        };
        let _: pb::UpsertTierResponse = c
            .mutate(M, &r.request_id, &r, Command::UpsertTier(&r))
            .await
            .unwrap();
    }
    let assign = |n: usize| {
        let code = if n.is_multiple_of(2) {
            "SILVER"
        } else {
            "GOLD"
        };
        pb::AssignTierRequest {
            merchant_id: M.to_owned(),
            request_id: format!("assign-{n}"),
            customer_id: customer.clone(),
            tier_code: code.to_owned(),
            source: pb::TierSource::Manual as i32,
            reason: format!("change {n}"),
            ..Default::default()
        }
    };
    for n in 0..5 {
        let r = assign(n);
        let _: pb::AssignTierResponse = c
            .mutate(M, &r.request_id, &r, Command::AssignTier(&r))
            .await
            .unwrap();
    }
    let reasons = |page: &pb::GetTierHistoryResponse| -> Vec<String> {
        page.assignments.iter().map(|a| a.reason.clone()).collect()
    };
    let first = c.tier_history(&history(&customer, 2, "")).await.unwrap();
    assert_eq!(reasons(&first), ["change 4", "change 3"]);
    // A newer assignment arrives between the pages.
    let r = assign(5);
    let _: pb::AssignTierResponse = c
        .mutate(M, &r.request_id, &r, Command::AssignTier(&r))
        .await
        .unwrap();
    let second = c
        .tier_history(&history(&customer, 2, &first.next_page_token))
        .await
        .unwrap();
    assert_eq!(reasons(&second), ["change 2", "change 1"]);
    let third = c
        .tier_history(&history(&customer, 2, &second.next_page_token))
        .await
        .unwrap();
    assert_eq!(reasons(&third), ["change 0"]);
    assert_eq!(third.next_page_token, "");
}

/// `first_card_only` attaches a first card (and the same card again) but not a second one.
#[tokio::test]
async fn a_first_card_only_attach_refuses_a_second_card() {
    let c = cards().await;
    let customer = create(&c, "r-1", "+79123450001", &[]).await.unwrap();
    let attach = |request_id: &str, raw: &str| pb::AddIdentifierRequest {
        merchant_id: M.to_owned(),
        request_id: request_id.to_owned(),
        customer_id: customer.clone(),
        input: Some(card(raw)),
        first_card_only: true,
    };
    for (rid, raw) in [("a-1", "AB1111"), ("a-2", "AB1111")] {
        let r = attach(rid, raw);
        let _: pb::AddIdentifierResponse = c
            .mutate(M, &r.request_id, &r, Command::AddIdentifier(&r))
            .await
            .unwrap_or_else(|e| panic!("{rid}: {e:?}"));
    }
    let r = attach("a-3", "AB2222");
    let second: Result<pb::AddIdentifierResponse, _> = c
        .mutate(M, &r.request_id, &r, Command::AddIdentifier(&r))
        .await;
    assert_eq!(
        refused(second),
        expect(
            Code::FailedPrecondition,
            "LIMIT_EXCEEDED",
            &[("field", "cards"), ("limit", "1")],
        )
    );
}
