//! The internal services are not an open door: cards, rules, ledger and notify answer only calls
//! carrying the service token (health stays open for probes), a service without a token does not
//! start, and the gateway's API-key check cannot be turned into a database flood by made-up key
//! ids.

use kopilka_proto::cards as cards_pb;
use kopilka_proto::cards::customer_service_client::CustomerServiceClient;
use kopilka_proto::gateway as gw;
use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_runtime::service_auth::ServiceToken;
use kopilka_runtime::status::reason_of;
use kopilka_tests::{authed, Backend, TestSuite};
use secrecy::{ExposeSecret, SecretString};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::ServerReflectionRequest;

fn bare(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

fn refused_for_the_token<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(
        reason_of(&status).as_deref(),
        Some("SERVICE_TOKEN_INVALID"),
        "{what}: {status:?}"
    );
}

#[tokio::test]
async fn internal_services_answer_only_the_service_token() {
    let suite = TestSuite::start(Backend::Sqlite).await;
    let wrong = ServiceToken::new(&SecretString::from("not-the-token-of-this-suite")).unwrap();
    for (name, addr) in suite.addrs.all() {
        if name == "gateway" {
            continue;
        }
        // Probes carry no credentials: health stays open.
        let health = HealthClient::new(bare(addr))
            .check(HealthCheckRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: health without a token: {e}"));
        assert_eq!(health.into_inner().status(), ServingStatus::Serving);
        // Anything else needs the token: reflection without one, or with a wrong one, is refused.
        let list = || {
            tokio_stream::iter([ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }])
        };
        refused_for_the_token(
            &format!("{name}: reflection without a token"),
            ServerReflectionClient::new(bare(addr))
                .server_reflection_info(list())
                .await,
        );
        let with_wrong =
            tonic::service::interceptor::InterceptedService::new(bare(addr), wrong.clone());
        refused_for_the_token(
            &format!("{name}: reflection with a wrong token"),
            ServerReflectionClient::new(with_wrong)
                .server_reflection_info(list())
                .await,
        );
    }

    // Minting points or merging accounts straight at the services is refused and changes
    // nothing.
    let adjust = ledger_pb::AdjustRequest {
        merchant_id: "m-open-door".into(),
        request_id: "mint".into(),
        customer_id: "c-1".into(),
        amount: "1000".into(),
        reason: "free points".into(),
        operator: "intruder".into(),
        ..Default::default()
    };
    refused_for_the_token(
        "Adjust without a token",
        LedgerServiceClient::new(bare(suite.addrs.ledger))
            .adjust(adjust)
            .await,
    );
    let balance = LedgerServiceClient::new(suite.channel(suite.addrs.ledger))
        .get_balance(ledger_pb::GetBalanceRequest {
            merchant_id: "m-open-door".into(),
            customer_id: "c-1".into(),
            ..Default::default()
        })
        .await
        .expect("a balance with the token")
        .into_inner()
        .balance
        .unwrap();
    assert_eq!(balance.available, "0");
    refused_for_the_token(
        "MergeCustomers without a token",
        CustomerServiceClient::new(bare(suite.addrs.cards))
            .merge_customers(cards_pb::MergeCustomersRequest {
                merchant_id: "m-open-door".into(),
                request_id: "merge".into(),
                surviving_customer_id: "a".into(),
                merged_customer_id: "b".into(),
            })
            .await,
    );

    // The gateway's callers authenticate with API keys, not the service token.
    let status = CheckoutServiceClient::new(bare(suite.addrs.gateway))
        .get_checkout(gw::GetCheckoutRequest {
            receipt_id: "r".into(),
        })
        .await
        .expect_err("no API key");
    assert_eq!(reason_of(&status).as_deref(), Some("API_KEY_INVALID"));
    suite.stop().await.unwrap();
}

#[tokio::test]
async fn an_internal_service_without_a_token_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ledger_svc::Config::default();
    config.service.listen_addr = "127.0.0.1:0".parse().unwrap();
    config.service.database_url = SecretString::from(format!(
        "sqlite://{}",
        dir.path().join("ledger.db").display()
    ));
    config.service.service_token = None;
    let error = match ledger_svc::build(config.clone()).await {
        Ok(_) => panic!("ledger-svc started without a service token"),
        Err(e) => format!("{:#}", anyhow::Error::new(e)),
    };
    assert!(error.contains("KOPILKA_SERVICE_TOKEN"), "{error}");
    // A token anyone could guess is no credential either.
    config.service.service_token = Some(SecretString::from("short"));
    let error = match ledger_svc::build(config).await {
        Ok(_) => panic!("ledger-svc started with a 5-character token"),
        Err(e) => format!("{:#}", anyhow::Error::new(e)),
    };
    assert!(error.contains("at least 16"), "{error}");
}

/// Made-up key ids cost a database read each only within a per-peer budget; the ids already
/// found unknown are answered from memory, and real keys stay cached.
#[tokio::test]
async fn made_up_key_ids_cannot_flood_the_key_check() {
    let suite = TestSuite::start(Backend::Sqlite).await;
    let m = suite.seed_merchant("flood").await;
    let mut checkout = CheckoutServiceClient::new(suite.channel(suite.addrs.gateway));
    let get = || gw::GetCheckoutRequest {
        receipt_id: "none".into(),
    };
    let real = |checkout: &mut CheckoutServiceClient<_>| {
        let mut checkout = checkout.clone();
        let key = m.terminal_key.clone();
        async move { checkout.get_checkout(authed(get(), &key)).await }
    };
    // The real key is known (and cached) before the flood.
    let status = real(&mut checkout).await.expect_err("no such checkout");
    assert_eq!(reason_of(&status).as_deref(), Some("CHECKOUT_NOT_FOUND"));
    let made_up: Vec<String> = (0..3 * gateway::auth::LOOKUPS_PER_SECOND)
        .map(|_| {
            gateway::keys::generate()
                .plaintext
                .expose_secret()
                .to_owned()
        })
        .collect();
    let mut unknown = 0;
    let mut limited = 0;
    for key in &made_up {
        let status = checkout
            .get_checkout(authed(get(), key))
            .await
            .expect_err("a made-up key");
        match reason_of(&status).as_deref() {
            Some("API_KEY_INVALID") => unknown += 1,
            Some("RATE_LIMITED") => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                limited += 1;
            }
            other => panic!("unexpected {other:?}: {status:?}"),
        }
    }
    assert_eq!(unknown + limited, made_up.len());
    // The budget is per peer: the real key's first lookup took one of it.
    let budget = gateway::auth::LOOKUPS_PER_SECOND as usize - 1;
    assert!(
        limited > 0 && unknown >= budget,
        "the first {budget} made-up ids are looked up, later ones are not: {unknown} unknown, \
         {limited} limited"
    );
    // An id found unknown is answered from memory even while lookups are exhausted.
    let first = &made_up[0];
    for _ in 0..5 {
        let status = checkout
            .get_checkout(authed(get(), first))
            .await
            .expect_err("still unknown");
        assert_eq!(reason_of(&status).as_deref(), Some("API_KEY_INVALID"));
    }
    // The real key was not evicted by the flood: served from the cache, no lookup needed.
    let status = real(&mut checkout).await.expect_err("no such checkout");
    assert_eq!(reason_of(&status).as_deref(), Some("CHECKOUT_NOT_FOUND"));
    suite.stop().await.unwrap();
}
