//! cards-svc identifiers through gRPC, on SQLite and on PostgreSQL + Redis: every input form a
//! register sends (phones in any notation, card numbers in the merchant's formats with their
//! check digits, EAN-13 barcodes, magnetic-stripe tracks, contactless UIDs) finds its customer
//! via LookupCustomer and reads the same way via ParseIdentifier; unreadable input is refused
//! with its reason; identifiers are unique per merchant; a lost card is blocked and replaced
//! while the balance stays; one merchant never sees another's customers.
//!
//! Each scenario is one async fn run by two `#[tokio::test]`s, one per backend.

use crate::cards_support::*;
use kopilka_proto::cards as pb;
use kopilka_proto::types::IdentifierKind;
use kopilka_tests::{on_both_backends, TestSuite};
use tonic::Code;

const M: &str = "m-ru";

/// The RU merchant's formats: plastic "77…" with a Luhn digit, and "46…" EAN-13 cards.
async fn ru_merchant_formats(c: &Cards) {
    set_formats(
        c,
        M,
        vec![
            format("plastic", "^77[0-9]{11}$", pb::CardChecksum::Luhn),
            format("barcode cards", "^46[0-9]{11}$", pb::CardChecksum::Ean13),
        ],
    )
    .await;
}

/// Every notation of a phone, the merchant's card formats, EAN-13 barcodes, both magstripe
/// tracks and contactless UIDs find the right customer; `matched` is the stored identifier and
/// `input_kind` how the input was read. ParseIdentifier reads each the same way.
async fn every_identifier_form_finds_its_customer(suite: TestSuite) {
    let c = Cards::new(&suite);
    ru_merchant_formats(&c).await;
    let plastic = luhn_card(1);
    let ean = with_ean13("460000000042");
    let ivan = customer(&c, M, "+7 912 345 67 89", &[raw(&plastic), raw(&ean)]).await;
    let uid = add_identifier(
        &c,
        M,
        &ivan.customer_id,
        hinted("04A224B2C35E80", IdentifierKind::ContactlessUid),
    )
    .await
    .expect("AddIdentifier UID");
    assert_eq!(
        uid.identifier.as_ref().unwrap().value,
        "04A224B2C35E80",
        "{uid:?}"
    );
    let john = customer(&c, M, "+44 20 7946 0958", &[]).await;

    use IdentifierKind::*;
    let spaced = format!("{} {} {}", &plastic[..4], &plastic[4..8], &plastic[8..]);
    let track1 = format!("%B{plastic}^IVANOV/IVAN^29121010000000000000?");
    let track2 = format!(";{plastic}=29121010000000000?");
    let both_tracks = format!("{track1}{track2}");
    let (p, e) = (plastic.as_str(), ean.as_str());
    let (spaced, track1, track2, both_tracks) = (
        spaced.as_str(),
        track1.as_str(),
        track2.as_str(),
        both_tracks.as_str(),
    );
    // (raw input, hint, whose, how it is read, the stored identifier it matches)
    let table: Vec<(
        &str,
        IdentifierKind,
        &pb::Customer,
        IdentifierKind,
        IdentifierKind,
        &str,
    )> = vec![
        (
            "8 (912) 345-67-89",
            Unspecified,
            &ivan,
            Phone,
            Phone,
            "+79123456789",
        ),
        (
            "+7 912 345 67 89",
            Unspecified,
            &ivan,
            Phone,
            Phone,
            "+79123456789",
        ),
        (
            "+79123456789",
            Unspecified,
            &ivan,
            Phone,
            Phone,
            "+79123456789",
        ),
        (
            "9123456789",
            Unspecified,
            &ivan,
            Phone,
            Phone,
            "+79123456789",
        ),
        ("89123456789", Phone, &ivan, Phone, Phone, "+79123456789"),
        (p, Unspecified, &ivan, CardNumber, CardNumber, p),
        (spaced, Unspecified, &ivan, CardNumber, CardNumber, p),
        (p, CardNumber, &ivan, CardNumber, CardNumber, p),
        (e, Unspecified, &ivan, BarcodeEan13, CardNumber, e),
        (e, BarcodeEan13, &ivan, BarcodeEan13, CardNumber, e),
        (track1, Unspecified, &ivan, Magstripe, CardNumber, p),
        (track2, Unspecified, &ivan, Magstripe, CardNumber, p),
        (both_tracks, Magstripe, &ivan, Magstripe, CardNumber, p),
        (
            "04:a2:24:b2:c3:5e:80",
            Unspecified,
            &ivan,
            ContactlessUid,
            ContactlessUid,
            "04A224B2C35E80",
        ),
        (
            "04-A2-24-B2-C3-5E-80",
            ContactlessUid,
            &ivan,
            ContactlessUid,
            ContactlessUid,
            "04A224B2C35E80",
        ),
        (
            "04a224b2c35e80",
            Unspecified,
            &ivan,
            ContactlessUid,
            ContactlessUid,
            "04A224B2C35E80",
        ),
        (
            "+44 20 7946 0958",
            Unspecified,
            &john,
            Phone,
            Phone,
            "+442079460958",
        ),
        ("+442079460958", Phone, &john, Phone, Phone, "+442079460958"),
    ];
    for (input, hint, whose, input_kind, kind, value) in table {
        let found = lookup(&c, M, hinted(input, hint))
            .await
            .unwrap_or_else(|e| panic!("lookup {input:?} ({hint:?}): {e:?}"));
        let who = found.customer.as_ref().unwrap();
        assert_eq!(who.customer_id, whose.customer_id, "{input:?}");
        assert_eq!(who.state, pb::CustomerState::Active as i32);
        assert_eq!(
            found.input_kind, input_kind as i32,
            "input kind of {input:?}"
        );
        let matched = found.matched.as_ref().expect("matched");
        assert_eq!(
            (matched.kind, matched.value.as_str()),
            (kind as i32, value),
            "matched by {input:?}"
        );
        assert!(
            !matched.display.contains(value),
            "the display form is masked: {matched:?}"
        );

        let parsed = parse(&c, M, hinted(input, hint))
            .await
            .unwrap_or_else(|e| panic!("parse {input:?} ({hint:?}): {e:?}"));
        assert_eq!(
            parsed.input_kind, input_kind as i32,
            "parsed kind of {input:?}"
        );
        let id = parsed.identifier.expect("identifier");
        assert_eq!(
            (id.kind, id.value.as_str()),
            (kind as i32, value),
            "parse {input:?}"
        );
    }

    // A foreign number and the same digits read in the merchant's region are different people.
    assert_ne!(ivan.customer_id, john.customer_id);
    let local = lookup(&c, M, raw("020 7946 0958")).await;
    assert!(
        local
            .as_ref()
            .map_or(true, |r| r.customer.as_ref().unwrap().customer_id
                != john.customer_id),
        "a national notation is read in the merchant's region: {local:?}"
    );
    // In a GB merchant the national notation is the British number.
    let gb = "m-gb";
    c.settings
        .clone()
        .update_cards_settings(pb::UpdateCardsSettingsRequest {
            merchant_id: gb.into(),
            request_id: rid(),
            settings: Some(pb::CardsSettings {
                default_phone_region: "GB".into(),
                ..Default::default()
            }),
            update_mask: mask(&["default_phone_region"]),
        })
        .await
        .expect("UpdateCardsSettings");
    let london = customer(&c, gb, "020 7946 0958", &[]).await;
    assert_eq!(london.profile.unwrap().phone, "+442079460958");
    assert_eq!(
        found(&c, gb, raw("+44 20 7946 0958")).await,
        london.customer_id
    );
    let parsed = parse(&c, gb, hinted("020 7946 0958", Phone)).await.unwrap();
    assert_eq!(parsed.identifier.unwrap().value, "+442079460958");
    assert_eq!(
        reason(
            lookup(&c, gb, raw("+7 912 345 67 89")).await,
            Code::NotFound
        ),
        "CARD_NOT_FOUND"
    );

    // The customer carries every identifier, the phone as E.164.
    let got = get_customer(&c, M, &ivan.customer_id).await.unwrap();
    assert_eq!(got.profile.as_ref().unwrap().phone, "+79123456789");
    let mut held: Vec<(i32, String)> = got
        .identifiers
        .iter()
        .map(|i| (i.kind, i.value.clone()))
        .collect();
    held.sort();
    let mut want = vec![
        (CardNumber as i32, plastic.clone()),
        (CardNumber as i32, ean.clone()),
        (ContactlessUid as i32, "04A224B2C35E80".to_owned()),
        (Phone as i32, "+79123456789".to_owned()),
    ];
    want.sort();
    assert_eq!(held, want);
}

/// Wrong check digits are INVALID_CHECKSUM, garbage is INVALID_IDENTIFIER, both
/// INVALID_ARGUMENT naming the input field; non-ASCII digits are never a phone.
async fn unreadable_identifiers_are_refused_with_their_reason(suite: TestSuite) {
    let c = Cards::new(&suite);
    ru_merchant_formats(&c).await;
    let plastic = luhn_card(2);
    let ean = with_ean13("460000000077");
    let owner = customer(&c, M, "+7 912 345 67 80", &[raw(&plastic), raw(&ean)]).await;
    use IdentifierKind::*;
    let bad_ean = wrong_check_digit(&ean);
    let bad_plastic = wrong_check_digit(&plastic);
    let (bad_e, bad_p) = (bad_ean.as_str(), bad_plastic.as_str());
    let table: Vec<(&str, IdentifierKind, &str)> = vec![
        (bad_e, BarcodeEan13, "INVALID_CHECKSUM"),
        (bad_e, Unspecified, "INVALID_CHECKSUM"),
        (bad_p, CardNumber, "INVALID_CHECKSUM"),
        (bad_p, Unspecified, "INVALID_CHECKSUM"),
        ("460000000042", BarcodeEan13, "INVALID_IDENTIFIER"),
        ("%garbage", Unspecified, "INVALID_IDENTIFIER"),
        (";12ab=99?", Unspecified, "INVALID_IDENTIFIER"),
        ("%B^^?", Magstripe, "INVALID_IDENTIFIER"),
        ("not a card", Magstripe, "INVALID_IDENTIFIER"),
        ("04:a2:24", ContactlessUid, "INVALID_IDENTIFIER"),
        (
            "+7 ９１２ ３４５ ６７ ８０",
            Unspecified,
            "INVALID_IDENTIFIER",
        ),
        ("+7 ９１２ ３４５ ６７ ８０", Phone, "INVALID_IDENTIFIER"),
        ("٨ (٩١٢) ٣٤٥-٦٧-٨٠", Unspecified, "INVALID_IDENTIFIER"),
        ("+7 912 345 67 8O", Phone, "INVALID_IDENTIFIER"),
    ];
    for (input, hint, want) in table {
        for (what, status) in [
            (
                "lookup",
                lookup(&c, M, hinted(input, hint)).await.map(|_| ()),
            ),
            ("parse", parse(&c, M, hinted(input, hint)).await.map(|_| ())),
        ] {
            let status = status.expect_err(&format!("{what} {input:?} ({hint:?}) must fail"));
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{what} {input:?}: {status:?}"
            );
            assert_eq!(
                kopilka_runtime::status::reason_of(&status).as_deref(),
                Some(want),
                "{what} {input:?} ({hint:?}): {status:?}"
            );
            let fields = kopilka_runtime::status::field_violations_of(&status);
            assert_eq!(fields.len(), 1, "{status:?}");
            assert_eq!(fields[0].0, "input.raw");
            assert!(
                !status.message().contains("912"),
                "errors never echo the input: {status:?}"
            );
        }
    }
    // A customer cannot be registered with such a phone or card either; nothing is created.
    let refused = create(&c, new_customer(M, "+7 ９１２ ３４５ ６７ ８１", &[])).await;
    assert_eq!(reason(refused, Code::InvalidArgument), "INVALID_IDENTIFIER");
    let refused = create(
        &c,
        new_customer(M, "+7 912 345 67 81", &[raw(&bad_plastic)]),
    )
    .await;
    assert_eq!(reason(refused, Code::InvalidArgument), "INVALID_CHECKSUM");
    assert_eq!(
        lookup(&c, M, raw("+7 912 345 67 81"))
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // The owner still has exactly their identifiers.
    assert_eq!(found(&c, M, raw(&plastic)).await, owner.customer_id);
}

/// An identifier belongs to one customer per merchant: ALREADY_EXISTS IDENTIFIER_TAKEN with the
/// owner in the ErrorInfo metadata, whether given as a phone, a card or in another notation.
async fn identifiers_are_unique_per_merchant(suite: TestSuite) {
    let c = Cards::new(&suite);
    ru_merchant_formats(&c).await;
    let plastic = luhn_card(3);
    let owner = customer(&c, M, "+7 912 345 67 89", &[raw(&plastic)]).await;
    let other = customer(&c, M, "+7 912 000 00 01", &[]).await;

    // The same phone in another notation, the same card spaced, or as a magstripe.
    let taken = create(&c, new_customer(M, "8 (912) 345-67-89", &[])).await;
    assert_eq!(taken_by(taken), owner.customer_id);
    let spaced = format!("{} {}", &plastic[..6], &plastic[6..]);
    let taken = create(&c, new_customer(M, "+7 912 000 00 02", &[raw(&spaced)])).await;
    assert_eq!(taken_by(taken), owner.customer_id);
    let taken = add_identifier(&c, M, &other.customer_id, raw(&plastic)).await;
    assert_eq!(taken_by(taken), owner.customer_id);
    let track = format!(";{plastic}=2912?");
    let taken = add_identifier(&c, M, &other.customer_id, raw(&track)).await;
    assert_eq!(taken_by(taken), owner.customer_id);
    let taken = add_identifier(
        &c,
        M,
        &other.customer_id,
        hinted("89123456789", IdentifierKind::Phone),
    )
    .await;
    assert_eq!(taken_by(taken), owner.customer_id);
    // The failed attempts created nobody and moved nothing.
    assert_eq!(
        reason(lookup(&c, M, raw("+7 912 000 00 02")).await, Code::NotFound),
        "CARD_NOT_FOUND"
    );
    assert_eq!(found(&c, M, raw(&plastic)).await, owner.customer_id);
    let other_now = get_customer(&c, M, &other.customer_id).await.unwrap();
    assert_eq!(other_now.identifiers.len(), 1, "{other_now:?}");

    // Attaching what the customer already holds succeeds.
    let again = add_identifier(&c, M, &owner.customer_id, raw(&spaced))
        .await
        .unwrap();
    assert_eq!(again.customer_id, owner.customer_id);
    assert_eq!(again.identifier.unwrap().value, plastic);
}

/// A lost card is blocked (lookups fail CARD_BLOCKED, the phone still works) and replaced: the
/// new card finds the same customer, whose ledger balance is untouched.
async fn a_lost_card_is_blocked_and_replaced_keeping_the_balance(suite: TestSuite) {
    let c = Cards::new(&suite);
    ru_merchant_formats(&c).await;
    let old = luhn_card(4);
    let new = luhn_card(5);
    let ivan = customer(&c, M, "+7 912 345 67 89", &[raw(&old)]).await;
    let id = ivan.customer_id.clone();
    accrue(&c, M, &id, "150").await;
    assert_eq!(
        available(&c, M, &found(&c, M, raw(&old)).await).await,
        dec("150")
    );

    let blocked = c
        .identifiers
        .clone()
        .block_identifier(pb::BlockIdentifierRequest {
            merchant_id: M.into(),
            request_id: rid(),
            input: Some(raw(&old)),
            customer_id: id.clone(),
            reason: pb::BlockReason::Lost as i32,
            comment: "lost at the pool".into(),
        })
        .await
        .expect("BlockIdentifier")
        .into_inner()
        .record
        .unwrap();
    assert_eq!(blocked.state, pb::IdentifierState::Blocked as i32);
    assert_eq!(blocked.block_reason, pb::BlockReason::Lost as i32);
    assert!(blocked.blocked_at.is_some());
    assert_eq!(
        reason(lookup(&c, M, raw(&old)).await, Code::FailedPrecondition),
        "CARD_BLOCKED"
    );
    let track = format!("%B{old}^IVANOV/IVAN^2912?");
    assert_eq!(
        reason(lookup(&c, M, raw(&track)).await, Code::FailedPrecondition),
        "CARD_BLOCKED"
    );
    assert_eq!(
        found(&c, M, raw("89123456789")).await,
        id,
        "the phone still works"
    );

    let replace = pb::ReplaceCardRequest {
        merchant_id: M.into(),
        request_id: rid(),
        old_card: Some(raw(&old)),
        new_card: Some(raw(&new)),
        reason: pb::BlockReason::Lost as i32,
        comment: String::new(),
    };
    let replaced = c
        .identifiers
        .clone()
        .replace_card(replace.clone())
        .await
        .expect("ReplaceCard")
        .into_inner();
    assert_eq!(replaced.customer_id, id);
    let old_record = replaced.old_card.as_ref().unwrap();
    assert_eq!(old_record.state, pb::IdentifierState::Blocked as i32);
    assert_eq!(old_record.replaced_by.as_ref().unwrap().value, new);
    let new_record = replaced.new_card.as_ref().unwrap();
    assert_eq!(new_record.state, pb::IdentifierState::Active as i32);
    assert_eq!(new_record.identifier.as_ref().unwrap().value, new);
    // A retry of the same request returns the same answer.
    let retried = c
        .identifiers
        .clone()
        .replace_card(replace)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, replaced);

    let by_new = found(&c, M, raw(&new)).await;
    assert_eq!(by_new, id);
    assert_eq!(
        available(&c, M, &by_new).await,
        dec("150"),
        "the balance stays"
    );
    assert_eq!(
        reason(lookup(&c, M, raw(&old)).await, Code::FailedPrecondition),
        "CARD_BLOCKED"
    );
    // The old card stays the customer's (and taken), listed only with blocked ones.
    let other = customer(&c, M, "+7 912 000 00 03", &[]).await;
    assert_eq!(
        taken_by(add_identifier(&c, M, &other.customer_id, raw(&old)).await),
        id
    );
    let list = |include_blocked| {
        let mut client = c.identifiers.clone();
        let id = id.clone();
        async move {
            client
                .list_identifiers(pb::ListIdentifiersRequest {
                    merchant_id: M.into(),
                    customer_id: id,
                    include_blocked,
                })
                .await
                .expect("ListIdentifiers")
                .into_inner()
                .records
                .into_iter()
                .map(|r| (r.identifier.unwrap().value, r.state))
                .collect::<Vec<_>>()
        }
    };
    let active = pb::IdentifierState::Active as i32;
    let all = list(true).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.contains(&(old.clone(), pb::IdentifierState::Blocked as i32)));
    assert!(all.contains(&(new.clone(), active)));
    let usable = list(false).await;
    assert_eq!(usable.len(), 2, "{usable:?}");
    assert!(usable.iter().all(|(v, s)| *s == active && *v != old));
    let profile = get_customer(&c, M, &id).await.unwrap();
    assert!(
        profile.identifiers.iter().all(|i| i.value != old),
        "{profile:?}"
    );

    // Unblocking makes the old card usable again.
    c.identifiers
        .clone()
        .unblock_identifier(pb::UnblockIdentifierRequest {
            merchant_id: M.into(),
            request_id: rid(),
            input: Some(raw(&old)),
        })
        .await
        .expect("UnblockIdentifier");
    assert_eq!(found(&c, M, raw(&old)).await, id);
}

/// Merchant B never sees merchant A's customers: lookups by A's phone or card are CARD_NOT_FOUND,
/// and A's customer id is NOT_FOUND exactly like an id that never existed. B may register the
/// same phone and card for its own customer.
async fn merchants_do_not_see_each_others_customers(suite: TestSuite) {
    let c = Cards::new(&suite);
    let (a, b) = ("m-a", "m-b");
    let card = luhn_card(6);
    let alice = customer(&c, a, "+7 912 345 67 89", &[raw(&card)]).await;
    // B has a customer of its own, so it is a merchant with data.
    customer(&c, b, "+7 912 111 11 11", &[]).await;

    for input in ["+7 912 345 67 89", "89123456789", card.as_str()] {
        assert_eq!(found(&c, a, raw(input)).await, alice.customer_id);
        assert_eq!(
            reason(lookup(&c, b, raw(input)).await, Code::NotFound),
            "CARD_NOT_FOUND"
        );
    }
    let foreign = get_customer(&c, b, &alice.customer_id).await.unwrap_err();
    let random = get_customer(&c, b, "0190c7b4-2f4e-7c4a-9a7e-4c1f0e9b7d21")
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    assert_eq!(foreign.code(), random.code());
    assert_eq!(
        kopilka_runtime::status::reason_of(&foreign),
        kopilka_runtime::status::reason_of(&random)
    );
    assert_eq!(
        kopilka_runtime::status::reason_of(&foreign).as_deref(),
        Some("CUSTOMER_NOT_FOUND")
    );
    assert_eq!(
        foreign.message().replace(&alice.customer_id, "ID"),
        random
            .message()
            .replace("0190c7b4-2f4e-7c4a-9a7e-4c1f0e9b7d21", "ID"),
        "the messages differ only by the id asked for"
    );
    let tier = c
        .tiers
        .clone()
        .get_customer_tier(pb::GetCustomerTierRequest {
            merchant_id: b.into(),
            customer_id: alice.customer_id.clone(),
        })
        .await;
    assert_eq!(reason(tier, Code::NotFound), "CUSTOMER_NOT_FOUND");
    let listed = c
        .customers
        .clone()
        .list_customers(pb::ListCustomersRequest {
            merchant_id: b.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customers;
    assert!(listed.iter().all(|x| x.customer_id != alice.customer_id));
    // B cannot block or take over A's card.
    let block = c
        .identifiers
        .clone()
        .block_identifier(pb::BlockIdentifierRequest {
            merchant_id: b.into(),
            request_id: rid(),
            input: Some(raw(&card)),
            reason: pb::BlockReason::Stolen as i32,
            ..Default::default()
        })
        .await;
    assert_eq!(reason(block, Code::NotFound), "CARD_NOT_FOUND");
    assert_eq!(found(&c, a, raw(&card)).await, alice.customer_id);

    // Nor reach A's customers by id.
    let added = add_identifier(&c, b, &alice.customer_id, raw(&luhn_card(7))).await;
    assert_eq!(reason(added, Code::NotFound), "CUSTOMER_NOT_FOUND");
    let set = c
        .referrals
        .clone()
        .set_referrer(pb::SetReferrerRequest {
            merchant_id: b.into(),
            request_id: rid(),
            customer_id: found(&c, b, raw("+7 912 111 11 11")).await,
            referrer: Some(raw("+7 912 345 67 89")),
        })
        .await;
    assert_eq!(reason(set, Code::NotFound), "REFERRER_NOT_FOUND");

    // The same phone and card are free in B.
    let bob = customer(&c, b, "8 912 345 67 89", &[raw(&card)]).await;
    assert_ne!(bob.customer_id, alice.customer_id);
    assert_eq!(found(&c, b, raw(&card)).await, bob.customer_id);
    assert_eq!(found(&c, a, raw(&card)).await, alice.customer_id);
}

on_both_backends!(
    every_identifier_form_finds_its_customer,
    unreadable_identifiers_are_refused_with_their_reason,
    identifiers_are_unique_per_merchant,
    a_lost_card_is_blocked_and_replaced_keeping_the_balance,
    merchants_do_not_see_each_others_customers,
);
