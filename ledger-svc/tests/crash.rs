//! Durability across a crash: the real `ledger-svc` binary on PostgreSQL, configured only by
//! environment variables, takes a stream of Accrue and RecordReceipt calls from several clients,
//! is killed with SIGKILL mid-stream and restarted on the same database. Every acknowledged
//! operation must be there (its transaction in the history, its receipt readable); the calls in
//! flight at the kill are retried with their request ids and must complete exactly once; the
//! balances must equal the sums of all operations and Verify must be ok.
//!
//! PostgreSQL runs with fsync off (TempPostgres): fine, the ledger process dies, not PostgreSQL.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kopilka_proto::ledger as pb;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_proto::types::{self, BasketLine, LotKind};
use kopilka_tests::{free_port, Channel, TempPostgres, SERVICE_TOKEN as TOKEN};

const M: &str = "m-crash";
const CUSTOMERS: usize = 4;

/// A running ledger-svc process.
struct Ledger {
    child: Child,
    addr: SocketAddr,
}

impl Ledger {
    fn spawn(database_url: &str, log: &std::path::Path) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ledger-svc"))
            .env("KOPILKA_LISTEN_ADDR", addr.to_string())
            .env("KOPILKA_DATABASE_URL", database_url)
            .env("KOPILKA_SERVICE_TOKEN", TOKEN)
            .env("KOPILKA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ledger-svc");
        Ledger { child, addr }
    }

    fn client(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(kopilka_tests::channel(self.addr))
    }

    /// Waits until the service answers a read.
    async fn ready(&mut self, log: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ledger-svc exited with {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            let probe = self
                .client()
                .get_balance(pb::GetBalanceRequest {
                    merchant_id: M.into(),
                    customer_id: "probe".into(),
                    expiring_within: None,
                })
                .await;
            if probe.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ledger-svc did not become ready: {probe:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown, no draining.
    fn kill9(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 failed");
        let status = self.child.wait().expect("reap ledger-svc");
        assert!(!status.success(), "killed, not exited: {status}");
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One write sent to the ledger.
#[derive(Clone, Debug)]
enum Op {
    Accrue(pb::AccrueRequest),
    Receipt(pb::RecordReceiptRequest),
}

impl Op {
    fn customer(&self) -> &str {
        match self {
            Op::Accrue(r) => &r.customer_id,
            Op::Receipt(r) => &r.receipt.as_ref().unwrap().customer_id,
        }
    }

    /// The net change of the customer's points.
    fn points(&self) -> i64 {
        match self {
            Op::Accrue(r) => r.grant.as_ref().unwrap().amount.parse().unwrap(),
            Op::Receipt(r) => {
                let input = r.receipt.as_ref().unwrap();
                let accrued: i64 = input
                    .lines
                    .iter()
                    .map(|l| l.accrual_points.parse::<i64>().unwrap())
                    .sum();
                accrued - input.redeem_points.parse::<i64>().unwrap()
            }
        }
    }

    /// Sends it; the transaction id on success.
    async fn send(
        &self,
        client: &mut LedgerServiceClient<Channel>,
    ) -> Result<String, tonic::Status> {
        match self {
            Op::Accrue(r) => client
                .accrue(r.clone())
                .await
                .map(|r| r.into_inner().transaction_id),
            Op::Receipt(r) => client
                .record_receipt(r.clone())
                .await
                .map(|r| r.into_inner().transaction_id),
        }
    }
}

/// The k-th write of a customer: accruals alternate with receipts that redeem 1 point and accrue
/// 3 (the accrual before each receipt covers its redemption).
fn op(customer: usize, k: usize) -> Op {
    let c = format!("c{customer}");
    let request_id = format!("{c}-op{k}");
    if k.is_multiple_of(2) {
        Op::Accrue(pb::AccrueRequest {
            merchant_id: M.into(),
            request_id,
            customer_id: c,
            grant: Some(types::PointsGrant {
                amount: (1 + k % 5).to_string(),
                kind: LotKind::Purchase as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
    } else {
        Op::Receipt(pb::RecordReceiptRequest {
            merchant_id: M.into(),
            request_id,
            receipt: Some(pb::ReceiptInput {
                receipt_id: format!("{c}-rc{k}"),
                customer_id: c,
                store_id: "s1".into(),
                currency: "RUB".into(),
                lines: vec![pb::ReceiptLine {
                    line: Some(BasketLine {
                        line_id: "1".into(),
                        product_id: "p1".into(),
                        unit_price: "99.90".into(),
                        quantity: "1".into(),
                        ..Default::default()
                    }),
                    redeem_points: "1".into(),
                    redeem_money: "1".into(),
                    accrual_points: "3".into(),
                    ..Default::default()
                }],
                redeem_points: "1".into(),
                ..Default::default()
            }),
        })
    }
}

#[derive(Default)]
struct Journal {
    /// Acknowledged: the op and its transaction id.
    acked: Vec<(Op, String)>,
    /// In flight when the connection broke: outcome unknown.
    unknown: Vec<Op>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .expect("start PostgreSQL");
    let url = pg.create_database("ledger").await;
    let dir = tempfile_dir();
    let log = dir.join("ledger-svc.log");

    let mut ledger = Ledger::spawn(&url, &log);
    ledger.ready(&log).await;

    // Writers, one per customer, each sequential; stop at the first failed call.
    let journal = Arc::new(Mutex::new(Journal::default()));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for customer in 0..CUSTOMERS {
        let (journal, acked, stop) = (journal.clone(), acked.clone(), stop.clone());
        let mut client = ledger.client();
        writers.spawn(async move {
            for k in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let op = op(customer, k);
                match op.send(&mut client).await {
                    Ok(transaction_id) => {
                        journal.lock().unwrap().acked.push((op, transaction_id));
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        assert!(
                            matches!(
                                status.code(),
                                tonic::Code::Unavailable
                                    | tonic::Code::Unknown
                                    | tonic::Code::Internal
                                    | tonic::Code::Cancelled
                            ),
                            "only the crash may fail a call: {status:?}"
                        );
                        journal.lock().unwrap().unknown.push(op);
                        break;
                    }
                }
            }
        });
    }
    // Mid-stream: after a few hundred acknowledged writes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::Relaxed) < 240 {
        assert!(Instant::now() < deadline, "the writers are too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ledger.kill9();
    let killed_at = acked.load(Ordering::Relaxed);
    // Writers still running notice the dead server; stop any that keep finding it.
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    stopper.abort();
    let journal = Arc::try_unwrap(journal).ok().unwrap().into_inner().unwrap();
    assert!(journal.acked.len() >= killed_at);
    assert!(
        !journal.unknown.is_empty(),
        "the kill interrupted the stream"
    );

    // Restart on the same database.
    let mut ledger = Ledger::spawn(&url, &log);
    ledger.ready(&log).await;
    let mut client = ledger.client();

    // Every acknowledged write is there.
    let mut history: BTreeSet<String> = BTreeSet::new();
    for customer in 0..CUSTOMERS {
        let mut token = String::new();
        loop {
            let page = client
                .list_history(pb::ListHistoryRequest {
                    merchant_id: M.into(),
                    customer_id: format!("c{customer}"),
                    page_size: 1000,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .expect("ListHistory")
                .into_inner();
            history.extend(page.transactions.into_iter().map(|t| t.transaction_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    }
    for (op, transaction_id) in &journal.acked {
        assert!(
            history.contains(transaction_id),
            "acknowledged {op:?} (transaction {transaction_id}) is lost"
        );
        if let Op::Receipt(r) = op {
            let receipt_id = r.receipt.as_ref().unwrap().receipt_id.clone();
            let stored = client
                .get_receipt(pb::GetReceiptRequest {
                    merchant_id: M.into(),
                    receipt_id: receipt_id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("acknowledged receipt {receipt_id} is lost: {e:?}"))
                .into_inner()
                .receipt
                .unwrap();
            assert_eq!(stored.customer_id, op.customer());
        }
    }
    // A retry of an acknowledged write returns its first answer and books nothing.
    let (first, first_tx) = &journal.acked[0];
    assert_eq!(
        &first.send(&mut client).await.expect("retry after restart"),
        first_tx
    );

    // The calls in flight at the kill: a retry with the same request id completes each once.
    eprintln!(
        "{} writes acknowledged before the kill, {} in flight or refused",
        journal.acked.len(),
        journal.unknown.len()
    );
    for op in &journal.unknown {
        op.send(&mut client)
            .await
            .unwrap_or_else(|e| panic!("retrying {op:?} after the restart: {e:?}"));
    }

    // Balances are the sums of everything, each write counted once.
    for customer in 0..CUSTOMERS {
        let c = format!("c{customer}");
        let expected: i64 = journal
            .acked
            .iter()
            .map(|(op, _)| op)
            .chain(&journal.unknown)
            .filter(|op| op.customer() == c)
            .map(Op::points)
            .sum();
        let balance = client
            .get_balance(pb::GetBalanceRequest {
                merchant_id: M.into(),
                customer_id: c.clone(),
                expiring_within: None,
            })
            .await
            .expect("GetBalance")
            .into_inner()
            .balance
            .unwrap();
        assert_eq!(balance.available, expected.to_string(), "balance of {c}");
    }
    let report = client
        .verify(pb::VerifyRequest {
            merchant_id: M.into(),
            ..Default::default()
        })
        .await
        .expect("Verify")
        .into_inner();
    assert!(
        report.ok,
        "Verify after the crash: {:?}",
        report.differences
    );
    assert_eq!(report.accounts_checked as usize, CUSTOMERS);

    // The restarted service takes new writes.
    op(0, 100_000)
        .send(&mut client)
        .await
        .expect("a new write after the restart");
    drop(ledger);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kopilka-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
