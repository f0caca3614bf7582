//! PostgreSQL restarted (`pg_ctl restart -m fast`: every connection cut, transactions in flight
//! rolled back) in the middle of a load of Confirms, under the process stack: cards-svc,
//! rules-svc, ledger-svc and the gateway each reconnect by themselves, nothing the gateway
//! acknowledged is lost, and the ledger verifies clean. Calls refused while the database is
//! away must be refused with UNAVAILABLE (retryable); the register retries the very same
//! Confirm (same request id) until it is acknowledged, so every receipt ends booked once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::{self as gw, CheckoutState};
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::rules as rules_pb;
use kopilka_tests::authed;
use kopilka_tests::stack::{dec, one, phone, within, Stack, Till, PHONE};
use rust_decimal::Decimal;
use tonic::Code;

const FLAT_5: &str = "rules:\n  - id: flat\n    name: flat\n    accrue_percent: {percent: \"5\"}\n";
/// Registers ringing up receipts at once.
const TASKS: usize = 3;
/// Acknowledged Confirms before the restart, and after it, before the load stops.
const BEFORE: u64 = 15;
const AFTER: u64 = 30;
/// Bounds on waiting for those (never a claim about speed).
const PATIENCE: Duration = Duration::from_secs(90);

/// What one register saw.
#[derive(Default)]
struct Seen {
    /// receipt id → points the acknowledged Confirm accrued.
    acknowledged: BTreeMap<String, Decimal>,
    /// Confirms refused with UNAVAILABLE (then retried).
    unavailable: u64,
    /// Any other refusal (also retried): must stay empty.
    wrong: Vec<String>,
}

/// Rings up receipts one after another until `stop`; each Confirm is retried with the same
/// request id until it is acknowledged (any refusal other than UNAVAILABLE is noted as wrong).
async fn register(
    mut checkout: CheckoutServiceClient<kopilka_tests::Channel>,
    key: String,
    task: usize,
    stop: Arc<AtomicBool>,
    restarted: Arc<AtomicBool>,
    after_restart: Arc<AtomicU64>,
    acknowledged: Arc<AtomicU64>,
) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + 2 * PATIENCE;
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let receipt_id = format!("rcpt-{task}-{i}");
        loop {
            let request = gw::ConfirmRequest {
                request_id: format!("confirm-{task}-{i}"),
                receipt_id: receipt_id.clone(),
                buyer: phone(PHONE),
                lines: one("1000.00"),
                ..Default::default()
            };
            let answer = within("Confirm", checkout.confirm(authed(request, &key))).await;
            match answer {
                Ok(reply) => {
                    let checkout = reply.into_inner().checkout.expect("a checkout");
                    if checkout.state() != CheckoutState::Confirmed {
                        seen.wrong.push(format!(
                            "{receipt_id}: acknowledged as {:?}",
                            checkout.state()
                        ));
                    }
                    let points = checkout
                        .receipt
                        .as_ref()
                        .and_then(|r| r.summary.as_ref())
                        .map(|s| dec(&s.points_accrued))
                        .unwrap_or_default();
                    seen.acknowledged.insert(receipt_id.clone(), points);
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                    if restarted.load(Ordering::SeqCst) {
                        after_restart.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
                Err(status) if status.code() == Code::Unavailable => {
                    seen.unavailable += 1;
                    assert!(
                        Instant::now() < deadline,
                        "{receipt_id} still refused after {:?}: {status:?}",
                        2 * PATIENCE
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => {
                    // Wrong (reported at the end), but the register retries it all the same:
                    // the receipt must still end booked exactly once.
                    seen.wrong.push(format!("{receipt_id}: {status:?}"));
                    assert!(
                        Instant::now() < deadline,
                        "{receipt_id} still refused after {:?}: {status:?}",
                        2 * PATIENCE
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    seen
}

/// Waits until `count` reaches `at_least` (or panics after [`PATIENCE`]).
async fn until(what: &str, count: &AtomicU64, at_least: u64) {
    let deadline = Instant::now() + PATIENCE;
    while count.load(Ordering::SeqCst) < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {at_least} within {PATIENCE:?}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// A Confirm in flight when PostgreSQL drops its connection (SQLSTATE 57P01, "terminating
// connection due to administrator command") is answered UNAVAILABLE and retried, never
// INTERNAL: `kopilka_runtime::db::is_unavailable` (this test found that about one run in six).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load() {
    let mut stack = Stack::start().await;
    let mut till = Till::open(&stack, "pg-restart").await;
    till.program(FLAT_5).await;
    let customer = till.register(PHONE).await;
    let points_before = till.points(&customer).await;

    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let after_restart = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let registers: Vec<_> = (0..TASKS)
        .map(|task| {
            tokio::spawn(register(
                CheckoutServiceClient::new(stack.gateway.channel()),
                till.m.terminal_key.clone(),
                task,
                stop.clone(),
                restarted.clone(),
                after_restart.clone(),
                acknowledged.clone(),
            ))
        })
        .collect();

    until("Confirms before the restart", &acknowledged, BEFORE).await;
    let pid_before = stack.pg.postmaster_pid();
    restarted.store(true, Ordering::SeqCst);
    tokio::task::block_in_place(|| stack.pg.restart());
    assert_ne!(
        stack.pg.postmaster_pid(),
        pid_before,
        "a new postmaster after the restart"
    );
    until("Confirms after the restart", &after_restart, AFTER).await;
    stop.store(true, Ordering::SeqCst);

    let mut acked = BTreeMap::new();
    let mut unavailable = 0;
    let mut wrong = Vec::new();
    for register in registers {
        let seen = register.await.expect("a register task");
        acked.extend(seen.acknowledged);
        unavailable += seen.unavailable;
        wrong.extend(seen.wrong);
    }
    eprintln!(
        "{} Confirms acknowledged, {unavailable} refused with UNAVAILABLE and retried",
        acked.len()
    );
    // Nothing acknowledged is lost: each receipt is in the ledger and in GetCheckout.
    for (receipt_id, points) in &acked {
        assert_eq!(*points, Decimal::from(50), "{receipt_id}: 5 % of 1 000");
        let receipt = till
            .ledger
            .get_receipt(ledger_pb::GetReceiptRequest {
                merchant_id: till.m.merchant_id.clone(),
                receipt_id: receipt_id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("{receipt_id} acknowledged but not in the ledger: {s:?}"))
            .into_inner()
            .receipt
            .expect("a receipt");
        assert_eq!(receipt.receipt_id, *receipt_id);
        let stored = till
            .get_checkout(receipt_id)
            .await
            .unwrap_or_else(|s| panic!("{receipt_id} acknowledged but no checkout: {s:?}"));
        assert_eq!(stored.state(), CheckoutState::Confirmed, "{receipt_id}");
    }
    // Booked exactly once each: the balance is the sum of the acknowledged accruals.
    let accrued: Decimal = acked.values().copied().sum();
    assert_eq!(till.points(&customer).await, points_before + accrued);
    let verify = till
        .ledger
        .verify(ledger_pb::VerifyRequest {
            merchant_id: till.m.merchant_id.clone(),
            ..Default::default()
        })
        .await
        .expect("Verify")
        .into_inner();
    assert!(
        verify.ok && verify.differences.is_empty(),
        "{:?}",
        verify.differences
    );
    assert!(
        verify.transactions_checked >= acked.len() as u64,
        "{verify:?}"
    );

    // Every service is the same process, serving on its new connections: cards-svc writes
    // (a new customer), rules-svc reads its database, the gateway and ledger-svc book.
    for service in [
        &mut stack.cards,
        &mut stack.rules,
        &mut stack.ledger,
        &mut stack.gateway,
    ] {
        assert!(
            service.is_running(),
            "{} died:\n{}",
            service.name(),
            service.logs()
        );
    }
    till.register("+7 912 500-00-02").await;
    till.programs
        .list_versions(rules_pb::ListVersionsRequest {
            merchant_id: till.m.merchant_id.clone(),
            ..Default::default()
        })
        .await
        .expect("rules-svc reads its database after the restart");
    let last = till
        .confirm("confirm-last", "rcpt-last")
        .await
        .expect("a Confirm after the load");
    assert_eq!(
        last.checkout.expect("a checkout").state(),
        CheckoutState::Confirmed
    );

    // Last, so the checks above ran on the receipts that met them too.
    if !wrong.is_empty() {
        // Which service answered so: their errors and warnings.
        let mut logs = String::new();
        for service in [&stack.gateway, &stack.cards, &stack.rules, &stack.ledger] {
            for line in service.logs().lines() {
                if line.contains("\"ERROR\"") || line.contains("\"WARN\"") {
                    logs.push_str(&format!("{}: {line}\n", service.name()));
                }
            }
        }
        panic!("answers other than OK or UNAVAILABLE: {wrong:#?}\n{logs}");
    }
}
