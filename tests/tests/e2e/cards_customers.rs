//! cards-svc customers through gRPC, on SQLite and on PostgreSQL + Redis: registration at the
//! register (idempotent by request_id, the referrer linked, the phone taken once), web
//! self-registration from signed links (tampered, revoked and used-up links refused), referral
//! chains three levels deep without self-referral or cycles, merging two customers with their
//! identifiers and ledger points (idempotent), profile updates, and bad input refused with field
//! violations and nothing changed. Finally: no full phone number or e-mail reaches the logs.
//!
//! Each scenario is one async fn run by two `#[tokio::test]`s, one per backend.

use std::sync::{Arc, Mutex};

use crate::cards_support::*;
use kopilka_proto::cards as pb;
use kopilka_proto::types::{self, IdentifierKind};
use kopilka_proto::wkt;
use kopilka_tests::{on_both_backends, Backend, TestSuite};
use tonic::{Code, Status};

const M: &str = "m-customers";

fn consent(channel: types::Channel, granted: bool) -> types::Consent {
    types::Consent {
        channel: channel as i32,
        granted,
        updated_at: None,
        source: "register".into(),
    }
}

async fn customers_of(c: &Cards, merchant: &str) -> Vec<pb::Customer> {
    c.customers
        .clone()
        .list_customers(pb::ListCustomersRequest {
            merchant_id: merchant.into(),
            filter: Some(pb::CustomerFilter {
                include_merged: true,
                ..Default::default()
            }),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("ListCustomers")
        .into_inner()
        .customers
}

// ---- registration -----------------------------------------------------------------------------

/// CreateCustomer with a referrer named by phone: the customer is linked, has the phone as an
/// identifier and their consents; the same request_id returns the same customer (the
/// registration happens once); another request with the same phone is IDENTIFIER_TAKEN; the
/// same request_id with another payload is IDEMPOTENCY_KEY_REUSED.
async fn registration_is_idempotent_and_links_the_referrer(suite: TestSuite) {
    let c = Cards::new(&suite);
    let friend = customer(&c, M, "+7 912 000 00 01", &[]).await;

    let mut request = new_customer(M, "8 (912) 345-67-89", &[]);
    request.referrer = Some(raw("+7 912 000 00 01"));
    request.consents = vec![
        consent(types::Channel::Sms, true),
        consent(types::Channel::Email, false),
    ];
    request.profile.as_mut().unwrap().email = "Ivan.Petrov@Example.COM".into();
    request.external_id = "crm-1".into();
    let first = create(&c, request.clone()).await.expect("CreateCustomer");
    let ivan = first.customer.clone().unwrap();
    assert_eq!(
        first.referrer_chain_customer_ids,
        vec![friend.customer_id.clone()]
    );
    assert_eq!(ivan.referrer_customer_id, friend.customer_id);
    assert_eq!(ivan.state, pb::CustomerState::Active as i32);
    assert_eq!(ivan.external_id, "crm-1");
    let profile = ivan.profile.as_ref().unwrap();
    assert_eq!(profile.phone, "+79123456789");
    assert_eq!(
        profile.email, "Ivan.Petrov@example.com",
        "the domain is lower-cased"
    );
    assert_eq!(
        ivan.identifiers
            .iter()
            .map(|i| (i.kind, i.value.as_str()))
            .collect::<Vec<_>>(),
        vec![(IdentifierKind::Phone as i32, "+79123456789")]
    );
    assert_eq!(
        ivan.consents
            .iter()
            .map(|x| (x.channel, x.granted, x.updated_at.is_some()))
            .collect::<Vec<_>>(),
        vec![
            (types::Channel::Sms as i32, true, true),
            (types::Channel::Email as i32, false, true),
        ]
    );
    let registration = ivan.registration.as_ref().unwrap();
    assert_eq!(
        registration.channel,
        pb::RegistrationChannel::Register as i32
    );
    assert_eq!(registration.terminal_id, "till-1");
    assert!(ivan.registered_at.is_some() && !ivan.etag.is_empty());

    // A retry is answered from the first registration.
    let again = create(&c, request.clone()).await.expect("a retry");
    assert_eq!(again, first);
    assert_eq!(customers_of(&c, M).await.len(), 2, "registered once");

    // Another registration with the same phone names its owner.
    let mut other = new_customer(M, "+79123456789", &[]);
    other.profile.as_mut().unwrap().first_name = "Someone else".into();
    assert_eq!(taken_by(create(&c, other).await), ivan.customer_id);
    // The same request id for another customer.
    let mut reused = request.clone();
    reused.profile.as_mut().unwrap().phone = "+7 912 555 55 55".into();
    assert_eq!(
        reason(create(&c, reused).await, Code::FailedPrecondition),
        "IDEMPOTENCY_KEY_REUSED"
    );
    // A referrer nobody has; an external id already used.
    let mut unknown = new_customer(M, "+7 912 555 55 56", &[]);
    unknown.referrer = Some(raw("+7 912 999 99 99"));
    assert_eq!(
        reason(create(&c, unknown).await, Code::NotFound),
        "REFERRER_NOT_FOUND"
    );
    // The external id is unique per merchant like an identifier: IDENTIFIER_TAKEN naming the
    // field and the owner.
    let mut dup = new_customer(M, "+7 912 555 55 57", &[]);
    dup.external_id = "crm-1".into();
    assert_eq!(
        refusal(create(&c, dup).await, Code::AlreadyExists),
        refused_with(
            "IDENTIFIER_TAKEN",
            &[
                ("field", "external_id"),
                ("customer_id", ivan.customer_id.as_str())
            ]
        )
    );
    let claimed = update(
        &c,
        pb::UpdateCustomerRequest {
            request_id: rid(),
            customer_id: friend.customer_id.clone(),
            external_id: "crm-1".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        refusal(claimed, Code::AlreadyExists),
        refused_with(
            "IDENTIFIER_TAKEN",
            &[
                ("field", "external_id"),
                ("customer_id", ivan.customer_id.as_str())
            ]
        )
    );
    assert_eq!(
        customers_of(&c, M).await.len(),
        2,
        "the refusals created nobody"
    );
    assert_eq!(
        reason(lookup(&c, M, raw("+7 912 555 55 56")).await, Code::NotFound),
        "CARD_NOT_FOUND"
    );
}

async fn create_link(c: &Cards, r: pb::CreateRegistrationLinkRequest) -> pb::RegistrationLink {
    c.registration
        .clone()
        .create_registration_link(pb::CreateRegistrationLinkRequest {
            merchant_id: M.into(),
            request_id: rid(),
            ..r
        })
        .await
        .expect("CreateRegistrationLink")
        .into_inner()
        .link
        .expect("link")
}

async fn resolve(
    c: &Cards,
    merchant: &str,
    token: &str,
) -> Result<pb::ResolveRegistrationTokenResponse, Status> {
    c.registration
        .clone()
        .resolve_registration_token(pb::ResolveRegistrationTokenRequest {
            merchant_id: merchant.into(),
            token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn self_register_request(token: &str, phone: &str) -> pb::SelfRegisterRequest {
    pb::SelfRegisterRequest {
        merchant_id: String::new(),
        request_id: rid(),
        token: token.into(),
        profile: Some(pb::CustomerProfile {
            first_name: "Olga".into(),
            phone: phone.into(),
            email: "olga@example.com".into(),
            ..Default::default()
        }),
        consents: vec![consent(types::Channel::Email, true)],
        referrer: None,
    }
}

async fn self_register(
    c: &Cards,
    r: pb::SelfRegisterRequest,
) -> Result<pb::SelfRegisterResponse, Status> {
    c.registration
        .clone()
        .self_register(r)
        .await
        .map(|r| r.into_inner())
}

/// A token with one character of its signature changed.
fn tampered(token: &str) -> String {
    let (payload, signature) = token.split_once('.').expect("payload.signature");
    let mut sig: Vec<char> = signature.chars().collect();
    sig[0] = if sig[0] == 'A' { 'B' } else { 'A' };
    format!("{payload}.{}", sig.into_iter().collect::<String>())
}

/// Self-registration: a link's token resolves to the merchant and the link, SelfRegister creates
/// a SELF_WEB customer (once per request_id); tampered tokens and revoked links are
/// REGISTRATION_TOKEN_INVALID, a used-up link REGISTRATION_TOKEN_EXPIRED; a personal invite link
/// names the referrer.
async fn self_registration_from_a_signed_link(suite: TestSuite) {
    let c = Cards::new(&suite);
    c.settings
        .clone()
        .update_cards_settings(pb::UpdateCardsSettingsRequest {
            merchant_id: M.into(),
            request_id: rid(),
            settings: Some(pb::CardsSettings {
                registration_page_url: "https://club.example/join".into(),
                ..Default::default()
            }),
            update_mask: mask(&["registration_page_url"]),
        })
        .await
        .expect("UpdateCardsSettings");
    let link = create_link(
        &c,
        pb::CreateRegistrationLinkRequest {
            store_id: "store-7".into(),
            campaign: "flyer-2026".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(!link.token.is_empty() && link.token.len() <= 512);
    assert_eq!(
        link.url,
        format!("https://club.example/join?t={}", link.token)
    );

    let resolved = resolve(&c, "", &link.token)
        .await
        .expect("ResolveRegistrationToken");
    assert_eq!(resolved.merchant_id, M);
    let shown = resolved.link.unwrap();
    assert_eq!(
        (shown.link_id.as_str(), shown.store_id.as_str()),
        (link.link_id.as_str(), "store-7")
    );
    assert!(shown.token.is_empty(), "the token is not echoed");
    assert!(resolve(&c, M, &link.token).await.is_ok());
    assert_eq!(
        reason(
            resolve(&c, "m-other", &link.token).await,
            Code::FailedPrecondition
        ),
        "REGISTRATION_TOKEN_INVALID"
    );

    let request = self_register_request(&link.token, "8 912 700 00 01");
    let olga = self_register(&c, request.clone())
        .await
        .expect("SelfRegister");
    let customer = olga.customer.clone().unwrap();
    let registration = customer.registration.clone().unwrap();
    assert_eq!(
        registration.channel,
        pb::RegistrationChannel::SelfWeb as i32
    );
    assert_eq!(registration.link_id, link.link_id);
    assert_eq!(registration.store_id, "store-7");
    assert_eq!(registration.campaign, "flyer-2026");
    assert_eq!(customer.profile.as_ref().unwrap().phone, "+79127000001");
    assert_eq!(
        found(&c, M, raw("+7 912 700-00-01")).await,
        customer.customer_id
    );
    // A retry returns the same customer and does not count as another use.
    assert_eq!(self_register(&c, request).await.unwrap(), olga);
    let uses = resolve(&c, M, &link.token)
        .await
        .unwrap()
        .link
        .unwrap()
        .uses;
    assert_eq!(uses, 1);
    // The phone is taken for a second registration through the link.
    let taken = self_register(&c, self_register_request(&link.token, "+79127000001")).await;
    assert_eq!(taken_by(taken), customer.customer_id);
    // A phone is required.
    let no_phone = self_register(&c, self_register_request(&link.token, "")).await;
    assert!(violations(no_phone).contains(&"profile.phone".to_owned()));

    // Tampered or foreign tokens.
    for token in [
        tampered(&link.token),
        "garbage".to_owned(),
        format!("x{}", link.token),
    ] {
        assert_eq!(
            reason(resolve(&c, "", &token).await, Code::FailedPrecondition),
            "REGISTRATION_TOKEN_INVALID",
            "{token}"
        );
        assert_eq!(
            reason(
                self_register(&c, self_register_request(&token, "+7 912 700 00 02")).await,
                Code::FailedPrecondition
            ),
            "REGISTRATION_TOKEN_INVALID",
            "{token}"
        );
    }

    // A revoked link stops working.
    c.registration
        .clone()
        .revoke_registration_link(pb::RevokeRegistrationLinkRequest {
            merchant_id: M.into(),
            request_id: rid(),
            link_id: link.link_id.clone(),
        })
        .await
        .expect("RevokeRegistrationLink");
    assert_eq!(
        reason(resolve(&c, "", &link.token).await, Code::FailedPrecondition),
        "REGISTRATION_TOKEN_INVALID"
    );
    assert_eq!(
        reason(
            self_register(&c, self_register_request(&link.token, "+7 912 700 00 03")).await,
            Code::FailedPrecondition
        ),
        "REGISTRATION_TOKEN_INVALID"
    );

    // A link for one registration is used up by it; a personal invite names the referrer.
    let once = create_link(
        &c,
        pb::CreateRegistrationLinkRequest {
            referrer_customer_id: customer.customer_id.clone(),
            max_uses: 1,
            ..Default::default()
        },
    )
    .await;
    let invited = self_register(&c, self_register_request(&once.token, "+7 912 700 00 04"))
        .await
        .expect("SelfRegister through an invite");
    assert_eq!(
        invited.referrer_chain_customer_ids,
        vec![customer.customer_id.clone()]
    );
    assert_eq!(
        invited.customer.unwrap().referrer_customer_id,
        customer.customer_id
    );
    assert_eq!(
        reason(
            self_register(&c, self_register_request(&once.token, "+7 912 700 00 05")).await,
            Code::FailedPrecondition
        ),
        "REGISTRATION_TOKEN_EXPIRED"
    );
    assert_eq!(
        reason(resolve(&c, "", &once.token).await, Code::FailedPrecondition),
        "REGISTRATION_TOKEN_EXPIRED"
    );
    // A link cannot expire in the past; active links exclude the revoked and the used up.
    let past = create_registration_link_expiring(&c, -60).await;
    assert_eq!(violations(past), vec!["expires_at".to_owned()]);
    let live = create_link(&c, Default::default()).await;
    let list = |include_inactive| {
        let mut client = c.registration.clone();
        async move {
            client
                .list_registration_links(pb::ListRegistrationLinksRequest {
                    merchant_id: M.into(),
                    include_inactive,
                    page_size: 0,
                    page_token: String::new(),
                })
                .await
                .expect("ListRegistrationLinks")
                .into_inner()
                .links
                .into_iter()
                .map(|l| l.link_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(false).await, vec![live.link_id.clone()]);
    assert_eq!(
        list(true).await,
        vec![live.link_id, once.link_id, link.link_id]
    );

    // A link works until it expires.
    let soon = create_registration_link_expiring(&c, 2)
        .await
        .unwrap()
        .link
        .unwrap();
    assert!(resolve(&c, "", &soon.token).await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(
        reason(resolve(&c, "", &soon.token).await, Code::FailedPrecondition),
        "REGISTRATION_TOKEN_EXPIRED"
    );
    assert_eq!(
        reason(
            self_register(&c, self_register_request(&soon.token, "+7 912 700 00 06")).await,
            Code::FailedPrecondition
        ),
        "REGISTRATION_TOKEN_EXPIRED"
    );
}

async fn create_registration_link_expiring(
    c: &Cards,
    in_secs: i64,
) -> Result<pb::CreateRegistrationLinkResponse, Status> {
    let at = chrono::Utc::now() + chrono::Duration::seconds(in_secs);
    c.registration
        .clone()
        .create_registration_link(pb::CreateRegistrationLinkRequest {
            merchant_id: M.into(),
            request_id: rid(),
            expires_at: Some(wkt::Timestamp {
                seconds: at.timestamp(),
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

// ---- referrals --------------------------------------------------------------------------------

async fn set_referrer(
    c: &Cards,
    customer: &str,
    referrer: &str,
) -> Result<pb::SetReferrerResponse, Status> {
    c.referrals
        .clone()
        .set_referrer(pb::SetReferrerRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: customer.into(),
            referrer: Some(raw(referrer)),
        })
        .await
        .map(|r| r.into_inner())
}

async fn chain(c: &Cards, customer: &str, max_levels: u32) -> Vec<(String, u32)> {
    c.referrals
        .clone()
        .get_referral_chain(pb::GetReferralChainRequest {
            merchant_id: M.into(),
            customer_id: customer.into(),
            max_levels,
        })
        .await
        .expect("GetReferralChain")
        .into_inner()
        .referrers
        .into_iter()
        .map(|l| (l.customer_id, l.level))
        .collect()
}

async fn referrals(
    c: &Cards,
    customer: &str,
    level: u32,
    page_size: i32,
) -> pb::ListReferralsResponse {
    c.referrals
        .clone()
        .list_referrals(pb::ListReferralsRequest {
            merchant_id: M.into(),
            customer_id: customer.into(),
            level,
            page_size,
            page_token: String::new(),
        })
        .await
        .expect("ListReferrals")
        .into_inner()
}

/// A ← B ← C ← D ← E, each naming the previous by phone: E's chain is D, C, B (the default
/// depth 3), A at level 4 only when asked; self-referral, cycles and a second referrer are
/// refused; ListReferrals counts each level.
async fn referral_chains_reach_three_levels_without_cycles(suite: TestSuite) {
    let c = Cards::new(&suite);
    let phones = [
        "+79120000001",
        "+79120000002",
        "+79120000003",
        "+79120000004",
        "+79120000005",
    ];
    let mut ids: Vec<String> = Vec::new();
    for (n, phone) in phones.iter().enumerate() {
        let mut r = new_customer(M, phone, &[]);
        if n > 0 {
            // The friend's phone in a cashier's notation.
            r.referrer = Some(raw(&format!(
                "8 ({}) {}",
                &phones[n - 1][2..5],
                &phones[n - 1][5..]
            )));
        }
        let created = create(&c, r).await.expect("CreateCustomer");
        let expected: Vec<String> = ids.iter().rev().take(3).cloned().collect();
        assert_eq!(
            created.referrer_chain_customer_ids, expected,
            "chain of customer {n}"
        );
        ids.push(created.customer.unwrap().customer_id);
    }
    let [a, b, cc, d, e] = [0, 1, 2, 3, 4].map(|i| ids[i].clone());
    assert_eq!(
        chain(&c, &e, 0).await,
        vec![(d.clone(), 1), (cc.clone(), 2), (b.clone(), 3)]
    );
    assert_eq!(chain(&c, &e, 4).await.last(), Some(&(a.clone(), 4)));
    assert_eq!(chain(&c, &a, 0).await, vec![]);
    let at_checkout = c
        .identifiers
        .clone()
        .lookup_customer(pb::LookupCustomerRequest {
            merchant_id: M.into(),
            input: Some(raw(phones[4])),
            include_referral_chain: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        at_checkout.referrer_chain_customer_ids,
        vec![d.clone(), cc.clone(), b.clone()]
    );

    // Naming yourself, at registration or later.
    let mut selfish = new_customer(M, "+7 912 000 00 09", &[]);
    selfish.referrer = Some(raw("8 912 000 00 09"));
    assert_eq!(
        reason(create(&c, selfish).await, Code::FailedPrecondition),
        "SELF_REFERRAL"
    );
    assert_eq!(
        reason(
            set_referrer(&c, &a, phones[0]).await,
            Code::FailedPrecondition
        ),
        "SELF_REFERRAL"
    );
    // A's referrer cannot be D: D descends from A.
    assert_eq!(
        reason(
            set_referrer(&c, &a, phones[3]).await,
            Code::FailedPrecondition
        ),
        "REFERRAL_CYCLE"
    );
    assert_eq!(
        reason(
            set_referrer(&c, &a, phones[1]).await,
            Code::FailedPrecondition
        ),
        "REFERRAL_CYCLE"
    );
    // B already has a referrer; naming the same one again is a no-op.
    assert_eq!(
        reason(
            set_referrer(&c, &b, phones[2]).await,
            Code::FailedPrecondition
        ),
        "REFERRER_ALREADY_SET"
    );
    let same = set_referrer(&c, &b, phones[0])
        .await
        .expect("the same referrer again");
    assert_eq!(same.referrers.len(), 1);
    assert_eq!(
        reason(
            set_referrer(&c, &a, "+7 912 999 99 99").await,
            Code::NotFound
        ),
        "REFERRER_NOT_FOUND"
    );
    assert_eq!(chain(&c, &a, 0).await, vec![], "nothing changed");

    // F, registered without a referrer, names A afterwards.
    let f = customer(&c, M, "+7 912 000 00 06", &[]).await.customer_id;
    let set = set_referrer(&c, &f, phones[0]).await.expect("SetReferrer");
    assert_eq!(
        set.referrers
            .iter()
            .map(|l| (l.customer_id.clone(), l.level))
            .collect::<Vec<_>>(),
        vec![(a.clone(), 1)]
    );

    // A referred B and F directly, C at level 2, D at level 3.
    let direct = referrals(&c, &a, 1, 0).await;
    assert_eq!(direct.total_count, 2);
    assert_eq!(
        direct
            .referrals
            .iter()
            .map(|l| (l.customer_id.clone(), l.level))
            .collect::<Vec<_>>(),
        vec![(f.clone(), 1), (b.clone(), 1)],
        "newest first"
    );
    assert!(direct.referrals.iter().all(|l| l.linked_at.is_some()));
    let second = referrals(&c, &a, 2, 0).await;
    assert_eq!(second.total_count, 1);
    assert_eq!(second.referrals[0].customer_id, cc);
    assert_eq!(second.referrals[0].level, 2);
    assert_eq!(referrals(&c, &a, 3, 0).await.referrals[0].customer_id, d);
    assert_eq!(referrals(&c, &e, 1, 0).await.total_count, 0);
    let paged = referrals(&c, &a, 1, 1).await;
    assert_eq!((paged.referrals.len(), paged.total_count), (1, 2));
    assert!(!paged.next_page_token.is_empty());

    // The merchant's depth bounds the chain.
    c.settings
        .clone()
        .update_cards_settings(pb::UpdateCardsSettingsRequest {
            merchant_id: M.into(),
            request_id: rid(),
            settings: Some(pb::CardsSettings {
                referral_max_depth: 2,
                ..Default::default()
            }),
            update_mask: mask(&["referral_max_depth"]),
        })
        .await
        .expect("UpdateCardsSettings");
    assert_eq!(chain(&c, &e, 0).await, vec![(d, 1), (cc, 2)]);
}

// ---- merging ----------------------------------------------------------------------------------

async fn merge(
    c: &Cards,
    request_id: &str,
    survivor: &str,
    merged: &str,
) -> Result<pb::MergeCustomersResponse, Status> {
    c.customers
        .clone()
        .merge_customers(pb::MergeCustomersRequest {
            merchant_id: M.into(),
            request_id: request_id.into(),
            surviving_customer_id: survivor.into(),
            merged_customer_id: merged.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Two records of one person, each with points: merging moves the identifiers, consents and
/// the ledger balance to the survivor; a repeat with the same request_id gets the stored answer,
/// a new request_id finds it done (merged_now false); the merged record reads MERGED.
async fn merge_is_idempotent_and_keeps_identifiers_and_points(suite: TestSuite) {
    let c = Cards::new(&suite);
    let survivor_card = luhn_card(11);
    let merged_card = luhn_card(12);
    let mut r = new_customer(M, "+7 912 100 00 01", &[raw(&survivor_card)]);
    r.consents = vec![consent(types::Channel::Sms, true)];
    let x = create(&c, r).await.unwrap().customer.unwrap();
    let mut r = new_customer(M, "+7 912 100 00 02", &[raw(&merged_card)]);
    r.consents = vec![consent(types::Channel::Email, true)];
    let y = create(&c, r).await.unwrap().customer.unwrap();
    let z = customer(&c, M, "+7 912 100 00 03", &[]).await;
    accrue(&c, M, &x.customer_id, "100").await;
    accrue(&c, M, &y.customer_id, "50").await;

    let request_id = rid();
    let first = merge(&c, &request_id, &x.customer_id, &y.customer_id)
        .await
        .expect("MergeCustomers");
    assert!(first.merged_now);
    assert_eq!(first.merged_customer_id, y.customer_id);
    let survivor = first.customer.clone().unwrap();
    assert_eq!(survivor.customer_id, x.customer_id);
    let mut held: Vec<String> = survivor
        .identifiers
        .iter()
        .map(|i| i.value.clone())
        .collect();
    held.sort();
    let mut want = vec![
        survivor_card.clone(),
        merged_card.clone(),
        "+79121000001".to_owned(),
        "+79121000002".to_owned(),
    ];
    want.sort();
    assert_eq!(held, want, "the survivor holds both customers' identifiers");
    assert_eq!(
        survivor
            .consents
            .iter()
            .map(|c| c.channel)
            .collect::<Vec<_>>(),
        vec![types::Channel::Sms as i32, types::Channel::Email as i32]
    );

    let repeat = merge(&c, &request_id, &x.customer_id, &y.customer_id)
        .await
        .unwrap();
    assert_eq!(repeat, first, "the stored answer, merged_now included");
    let later = merge(&c, &rid(), &x.customer_id, &y.customer_id)
        .await
        .unwrap();
    assert!(!later.merged_now);
    assert_eq!(later.customer.unwrap().customer_id, x.customer_id);

    for input in [
        merged_card.as_str(),
        "8 912 100 00 02",
        survivor_card.as_str(),
    ] {
        let found = lookup(&c, M, raw(input)).await.unwrap().customer.unwrap();
        assert_eq!(found.customer_id, x.customer_id, "{input}");
        assert_eq!(found.state, pb::CustomerState::Active as i32);
    }
    assert_eq!(available(&c, M, &x.customer_id).await, dec("150"));
    assert_eq!(available(&c, M, &y.customer_id).await, dec("0"));
    let merged = get_customer(&c, M, &y.customer_id).await.unwrap();
    assert_eq!(merged.state, pb::CustomerState::Merged as i32);
    assert_eq!(merged.merged_into_customer_id, x.customer_id);
    assert!(merged.identifiers.is_empty(), "{merged:?}");

    // A request id already used for another request moves no points.
    let mut r = new_customer(M, "+7 912 100 00 04", &[]);
    let used = r.request_id.clone();
    r.consents.clear();
    create(&c, r).await.unwrap();
    assert_eq!(
        reason(
            merge(&c, &used, &z.customer_id, &x.customer_id).await,
            Code::FailedPrecondition
        ),
        "IDEMPOTENCY_KEY_REUSED"
    );
    assert_eq!(available(&c, M, &x.customer_id).await, dec("150"));
    assert_eq!(available(&c, M, &z.customer_id).await, dec("0"));

    // A merged record is read-only and cannot be merged again elsewhere.
    assert_eq!(
        reason(
            merge(&c, &rid(), &z.customer_id, &y.customer_id).await,
            Code::FailedPrecondition
        ),
        "MERGE_CONFLICT"
    );
    assert_eq!(
        reason(
            merge(&c, &rid(), &x.customer_id, &x.customer_id).await,
            Code::FailedPrecondition
        ),
        "MERGE_CONFLICT"
    );
    assert_eq!(
        reason(
            merge(&c, &rid(), &x.customer_id, "no-such-customer").await,
            Code::NotFound
        ),
        "CUSTOMER_NOT_FOUND"
    );
    let update = c
        .customers
        .clone()
        .update_customer(pb::UpdateCustomerRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: y.customer_id.clone(),
            profile: Some(pb::CustomerProfile {
                first_name: "Ghost".into(),
                ..Default::default()
            }),
            update_mask: mask(&["first_name"]),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(update, Code::FailedPrecondition), "CUSTOMER_MERGED");
    // Listing shows the merged record only when asked.
    let active = c
        .customers
        .clone()
        .list_customers(pb::ListCustomersRequest {
            merchant_id: M.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customers;
    assert_eq!(active.len(), 3);
    assert_eq!(customers_of(&c, M).await.len(), 4);
}

/// Merging moves referral links to the survivor without ever making it its own referrer: a
/// survivor referred by the merged record, or sitting below a customer the merged record
/// referred, loses that link; everyone else keeps a chain that ends.
async fn merging_keeps_referral_links_acyclic(suite: TestSuite) {
    let c = Cards::new(&suite);
    let referred_by = |phone: &str, referrer: &str| {
        let mut r = new_customer(M, phone, &[]);
        r.referrer = Some(raw(referrer));
        r
    };
    let id = |r: pb::CreateCustomerResponse| r.customer.unwrap().customer_id;
    // A referred B; B survives a merge of A into it.
    let a = customer(&c, M, "+7 912 200 00 01", &[]).await.customer_id;
    let b = id(
        create(&c, referred_by("+7 912 200 00 02", "+7 912 200 00 01"))
            .await
            .unwrap(),
    );
    let merged = merge(&c, &rid(), &b, &a).await.expect("MergeCustomers");
    assert_eq!(
        merged.customer.unwrap().referrer_customer_id,
        "",
        "B cannot refer itself"
    );
    assert_eq!(chain(&c, &b, 0).await, vec![]);

    // M referred R, R referred S; merging M into S would put S above R and R above S.
    let m = customer(&c, M, "+7 912 300 00 01", &[]).await.customer_id;
    let r = id(
        create(&c, referred_by("+7 912 300 00 02", "+7 912 300 00 01"))
            .await
            .unwrap(),
    );
    let s = id(
        create(&c, referred_by("+7 912 300 00 03", "+7 912 300 00 02"))
            .await
            .unwrap(),
    );
    let t = id(
        create(&c, referred_by("+7 912 300 00 04", "+7 912 300 00 03"))
            .await
            .unwrap(),
    );
    merge(&c, &rid(), &s, &m).await.expect("MergeCustomers");
    assert_eq!(
        chain(&c, &r, 0).await,
        vec![(s.clone(), 1)],
        "M's referral moved to S"
    );
    assert_eq!(chain(&c, &s, 0).await, vec![], "S is no longer below R");
    assert_eq!(chain(&c, &t, 0).await, vec![(s.clone(), 1)]);
    assert_eq!(
        get_customer(&c, M, &s).await.unwrap().referrer_customer_id,
        ""
    );
    let below = referrals(&c, &s, 1, 0).await;
    let mut direct: Vec<String> = below.referrals.into_iter().map(|l| l.customer_id).collect();
    direct.sort();
    let mut want = vec![r.clone(), t.clone()];
    want.sort();
    assert_eq!(direct, want);
    assert_eq!(referrals(&c, &s, 2, 0).await.total_count, 0);
}

// ---- profile and bad input --------------------------------------------------------------------

async fn update(c: &Cards, r: pb::UpdateCustomerRequest) -> Result<pb::Customer, Status> {
    c.customers
        .clone()
        .update_customer(pb::UpdateCustomerRequest {
            merchant_id: M.into(),
            ..r
        })
        .await
        .map(|r| r.into_inner().customer.unwrap())
}

/// Profile updates by field mask with an etag: changing the phone replaces the PHONE
/// identifier; a stale etag is ABORTED CONCURRENT_MODIFICATION; consents are set per channel.
async fn profile_updates_follow_the_mask_and_the_etag(suite: TestSuite) {
    let c = Cards::new(&suite);
    let ivan = customer(&c, M, "+7 912 345 67 89", &[]).await;
    let updated = update(
        &c,
        pb::UpdateCustomerRequest {
            request_id: rid(),
            customer_id: ivan.customer_id.clone(),
            profile: Some(pb::CustomerProfile {
                first_name: "Not applied".into(),
                phone: "8 912 345 00 00".into(),
                email: "ivan@example.com".into(),
                birth_date: Some(types::Date {
                    year: 0,
                    month: 2,
                    day: 29,
                }),
                ..Default::default()
            }),
            update_mask: mask(&["phone", "email", "birth_date"]),
            etag: ivan.etag.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("UpdateCustomer");
    let profile = updated.profile.as_ref().unwrap();
    assert_eq!(profile.first_name, "Ivan", "outside the mask");
    assert_eq!(profile.phone, "+79123450000");
    assert_eq!(profile.email, "ivan@example.com");
    assert_ne!(updated.etag, ivan.etag);
    assert_eq!(
        found(&c, M, raw("+7 912 345 00 00")).await,
        ivan.customer_id
    );
    assert_eq!(
        reason(lookup(&c, M, raw("+7 912 345 67 89")).await, Code::NotFound),
        "CARD_NOT_FOUND"
    );
    // The old etag is stale now.
    let stale = update(
        &c,
        pb::UpdateCustomerRequest {
            request_id: rid(),
            customer_id: ivan.customer_id.clone(),
            profile: Some(pb::CustomerProfile {
                last_name: "Petrov".into(),
                ..Default::default()
            }),
            update_mask: mask(&["last_name"]),
            etag: ivan.etag.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(reason(stale, Code::Aborted), "CONCURRENT_MODIFICATION");

    let consents = c
        .customers
        .clone()
        .set_consent(pb::SetConsentRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: ivan.customer_id.clone(),
            consent: Some(consent(types::Channel::Push, true)),
        })
        .await
        .expect("SetConsent")
        .into_inner()
        .consents;
    assert_eq!(consents.len(), 1);
    assert!(consents[0].granted && consents[0].updated_at.is_some());
    let pushable = c
        .customers
        .clone()
        .list_customers(pb::ListCustomersRequest {
            merchant_id: M.into(),
            filter: Some(pb::CustomerFilter {
                consent_channel: types::Channel::Push as i32,
                birth_month: 2,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customers;
    assert_eq!(pushable.len(), 1);
    assert_eq!(pushable[0].customer_id, ivan.customer_id);
}

/// Bad input is INVALID_ARGUMENT with field violations and changes nothing — including the
/// very first request a merchant ever sends — and a request id reused for another payload is
/// IDEMPOTENCY_KEY_REUSED.
async fn bad_input_is_refused_and_changes_nothing(suite: TestSuite) {
    let c = Cards::new(&suite);
    // The merchant's first request is refused...
    let mut r = new_customer(M, "", &[]);
    r.profile.as_mut().unwrap().email = "not-an-email".into();
    let fields = violations(create(&c, r).await);
    assert!(fields.contains(&"profile.email".to_owned()), "{fields:?}");
    assert!(fields.contains(&"profile.phone".to_owned()), "{fields:?}");
    assert!(customers_of(&c, M).await.is_empty());
    // ...and leaves the merchant fully usable: settings, tiers and links work right after.
    c.settings
        .clone()
        .update_cards_settings(pb::UpdateCardsSettingsRequest {
            merchant_id: M.into(),
            request_id: rid(),
            settings: Some(pb::CardsSettings {
                referral_max_depth: 5,
                ..Default::default()
            }),
            update_mask: mask(&["referral_max_depth"]),
        })
        .await
        .expect("UpdateCardsSettings after a refused first request");
    let link = create_link(&c, Default::default()).await;
    resolve(&c, M, &link.token)
        .await
        .expect("the link's token verifies");

    let ivan = customer(&c, M, "+7 912 345 67 89", &[]).await;
    let before = get_customer(&c, M, &ivan.customer_id).await.unwrap();
    let bad_updates = [
        (
            mask(&["nickname"]),
            pb::CustomerProfile::default(),
            "update_mask",
        ),
        (None, pb::CustomerProfile::default(), "update_mask"),
        (
            mask(&["email"]),
            pb::CustomerProfile {
                email: "ivan@".into(),
                ..Default::default()
            },
            "profile.email",
        ),
        (
            mask(&["birth_date"]),
            pb::CustomerProfile {
                birth_date: Some(types::Date {
                    year: 2001,
                    month: 2,
                    day: 29,
                }),
                ..Default::default()
            },
            "profile.birth_date",
        ),
        (
            mask(&["first_name"]),
            pb::CustomerProfile {
                first_name: "x".repeat(101),
                ..Default::default()
            },
            "profile.first_name",
        ),
    ];
    for (update_mask, profile, field) in bad_updates {
        let refused = update(
            &c,
            pb::UpdateCustomerRequest {
                request_id: rid(),
                customer_id: ivan.customer_id.clone(),
                profile: Some(profile),
                update_mask,
                ..Default::default()
            },
        )
        .await;
        let fields = violations(refused);
        assert!(fields.contains(&field.to_owned()), "{field}: {fields:?}");
    }
    assert_eq!(
        get_customer(&c, M, &ivan.customer_id).await.unwrap(),
        before,
        "nothing changed"
    );

    // A consent without a channel or source; a page too large; a merge without ids.
    let consent_refused = c
        .customers
        .clone()
        .set_consent(pb::SetConsentRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: ivan.customer_id.clone(),
            consent: Some(types::Consent::default()),
        })
        .await;
    let fields = violations(consent_refused);
    assert!(
        fields.contains(&"consent.channel".to_owned())
            && fields.contains(&"consent.source".to_owned())
    );
    let page = c
        .customers
        .clone()
        .list_customers(pb::ListCustomersRequest {
            merchant_id: M.into(),
            page_size: 5000,
            ..Default::default()
        })
        .await;
    assert_eq!(
        refusal(page, Code::InvalidArgument),
        refused_with(
            "LIMIT_EXCEEDED",
            &[("field", "page_size"), ("limit", "1000")]
        )
    );
    let fields = violations(merge(&c, &rid(), "", "").await);
    assert!(fields.contains(&"surviving_customer_id".to_owned()));
    let no_request_id = create(
        &c,
        pb::CreateCustomerRequest {
            request_id: String::new(),
            ..new_customer(M, "+7 912 000 00 00", &[])
        },
    )
    .await;
    assert_eq!(violations(no_request_id), vec!["request_id".to_owned()]);

    // One request id, two different requests.
    let request_id = rid();
    let update_first_name = |name: &str| pb::UpdateCustomerRequest {
        request_id: request_id.clone(),
        customer_id: ivan.customer_id.clone(),
        profile: Some(pb::CustomerProfile {
            first_name: name.into(),
            ..Default::default()
        }),
        update_mask: mask(&["first_name"]),
        ..Default::default()
    };
    let renamed = update(&c, update_first_name("Ivan II")).await.unwrap();
    assert_eq!(
        update(&c, update_first_name("Ivan II")).await.unwrap(),
        renamed
    );
    assert_eq!(
        reason(
            update(&c, update_first_name("Ivan III")).await,
            Code::FailedPrecondition
        ),
        "IDEMPOTENCY_KEY_REUSED"
    );
    assert_eq!(
        get_customer(&c, M, &ivan.customer_id)
            .await
            .unwrap()
            .profile
            .unwrap()
            .first_name,
        "Ivan II"
    );
    assert_eq!(customers_of(&c, M).await.len(), 1);
}

on_both_backends!(
    registration_is_idempotent_and_links_the_referrer,
    self_registration_from_a_signed_link,
    referral_chains_reach_three_levels_without_cycles,
    merge_is_idempotent_and_keeps_identifiers_and_points,
    merging_keeps_referral_links_acyclic,
    profile_updates_follow_the_mask_and_the_etag,
    bad_input_is_refused_and_changes_nothing,
);

// ---- privacy ----------------------------------------------------------------------------------

/// Log lines written while a test runs (this thread's subscriber; the `#[tokio::test]` runtime
/// runs the suite's tasks on the test thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Registration, lookups, refusals and merges at debug level log no full phone number and no
/// e-mail address.
async fn no_phone_or_email_in_the_logs(backend: Backend) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let suite = TestSuite::start(backend).await;
    let c = Cards::new(&suite);
    let mut r = new_customer(M, "+7 912 345 67 89", &[]);
    r.profile.as_mut().unwrap().email = "secret.person@example.com".into();
    let ivan = create(&c, r).await.unwrap().customer.unwrap();
    let other = customer(&c, M, "+7 912 765 43 21", &[]).await;
    found(&c, M, raw("8 (912) 345-67-89")).await;
    let _ = create(&c, new_customer(M, "89123456789", &[]))
        .await
        .unwrap_err();
    let _ = lookup(&c, M, raw("+7 912 111 22 33")).await.unwrap_err();
    let _ = lookup(&c, M, raw("+7 912 111 22 3x")).await.unwrap_err();
    c.identifiers
        .clone()
        .block_identifier(pb::BlockIdentifierRequest {
            merchant_id: M.into(),
            request_id: rid(),
            input: Some(raw("+7 912 765 43 21")),
            reason: pb::BlockReason::Other as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = lookup(&c, M, raw("+7 912 765 43 21")).await.unwrap_err();
    let _ = merge(&c, &rid(), &ivan.customer_id, &other.customer_id).await;
    suite.stop().await.expect("clean shutdown");

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("cards_svc"), "the capture works: {text}");
    for secret in ["9123456789", "9127654321", "9121112233", "secret.person"] {
        assert!(!text.contains(secret), "`{secret}` in the logs:\n{text}");
    }
}

#[tokio::test]
async fn no_phone_or_email_in_the_logs_on_sqlite() {
    no_phone_or_email_in_the_logs(Backend::Sqlite).await;
}

#[tokio::test]
async fn no_phone_or_email_in_the_logs_on_postgres_and_redis() {
    no_phone_or_email_in_the_logs(Backend::PostgresRedis).await;
}
