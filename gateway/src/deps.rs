//! The gateway's clients of cards-svc, rules-svc and ledger-svc, composed from tower layers:
//! a timeout per hop (never beyond the caller's own deadline), a concurrency limit per
//! dependency with load shedding past it, and retries for idempotent calls only. A dependency
//! that is down, slow or shedding becomes UNAVAILABLE DEPENDENCY_UNAVAILABLE, never a silently
//! wrong answer; its own answers (NOT_FOUND, FAILED_PRECONDITION …) pass through unchanged.

use std::future::Future;
use std::time::Duration;

use kopilka_proto::cards::customer_service_client::CustomerServiceClient;
use kopilka_proto::cards::identifier_service_client::IdentifierServiceClient;
use kopilka_proto::cards::referral_service_client::ReferralServiceClient;
use kopilka_proto::cards::tier_service_client::TierServiceClient;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_proto::rules::catalog_service_client::CatalogServiceClient;
use kopilka_proto::rules::evaluation_service_client::EvaluationServiceClient;
use kopilka_proto::rules::program_service_client::ProgramServiceClient;
use kopilka_runtime::backoff::Backoff;
use kopilka_runtime::service_auth::{ServiceChannel, ServiceToken};
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Response, Status};
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::timeout::Timeout;
use tower::ServiceBuilder;

use crate::config::Config;
use crate::error::{Error, Result};

/// One dependency's channel with its layers; every call carries the service token.
pub type Svc = LoadShed<ConcurrencyLimit<Timeout<ServiceChannel>>>;

/// The dependencies, by the names used in DEPENDENCY_UNAVAILABLE's `dependency` metadata.
pub const CARDS: &str = "cards";
pub const RULES: &str = "rules";
pub const LEDGER: &str = "ledger";

/// Whether a call may be repeated after a failure that leaves its outcome unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads, and writes carrying a request id the callee de-duplicates.
    Idempotent,
    /// Anything else: one attempt.
    Once,
}

/// The caller's deadline, read from its `grpc-timeout`; hops never outlive it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// The deadline of an incoming request (none if the caller set none).
    pub fn of<T>(request: &Request<T>) -> Self {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        Deadline(timeout.map(|t| Instant::now() + t))
    }

    /// No deadline (background jobs).
    pub fn none() -> Self {
        Deadline(None)
    }

    fn budget(&self, hop: Duration) -> Option<Duration> {
        match self.0 {
            None => Some(hop),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(hop))
            }
        }
    }
}

/// `grpc-timeout` values: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The clients, cheap to clone.
#[derive(Clone)]
pub struct Deps {
    pub identifiers: IdentifierServiceClient<Svc>,
    pub customers: CustomerServiceClient<Svc>,
    pub tiers: TierServiceClient<Svc>,
    pub referrals: ReferralServiceClient<Svc>,
    pub evaluation: EvaluationServiceClient<Svc>,
    pub programs: ProgramServiceClient<Svc>,
    pub catalog: CatalogServiceClient<Svc>,
    pub ledger: LedgerServiceClient<Svc>,
    hop_timeout: Duration,
    retries: u32,
}

impl Deps {
    /// Lazily connecting clients for the URLs in `config`.
    pub fn new(config: &Config, token: ServiceToken) -> Result<Self, tonic::transport::Error> {
        let hop = Duration::from_millis(config.dependency_timeout_ms.max(1));
        let layered = |url: &str| -> Result<Svc, tonic::transport::Error> {
            let channel = Endpoint::from_shared(url.to_owned())?
                .connect_timeout(hop.min(Duration::from_secs(1)))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .connect_lazy();
            let channel = InterceptedService::new(channel, token.clone());
            Ok(ServiceBuilder::new()
                .load_shed()
                .concurrency_limit(config.dependency_concurrency.max(1))
                // A backstop: each call also carries its own (possibly shorter) timeout.
                .timeout(hop)
                .service(channel))
        };
        let cards = layered(&config.cards_url)?;
        let rules = layered(&config.rules_url)?;
        let ledger = layered(&config.ledger_url)?;
        Ok(Self {
            identifiers: IdentifierServiceClient::new(cards.clone()),
            customers: CustomerServiceClient::new(cards.clone()),
            referrals: ReferralServiceClient::new(cards.clone()),
            tiers: TierServiceClient::new(cards),
            evaluation: EvaluationServiceClient::new(rules.clone()),
            programs: ProgramServiceClient::new(rules.clone()),
            catalog: CatalogServiceClient::new(rules),
            ledger: LedgerServiceClient::new(ledger),
            hop_timeout: hop,
            retries: config.dependency_retries,
        })
    }

    /// Makes one call to `dependency` within the hop timeout and the caller's deadline,
    /// retrying an idempotent call that met UNAVAILABLE with a short back-off.
    pub async fn call<M, R, F, Fut>(
        &self,
        dependency: &'static str,
        deadline: Deadline,
        retry: Retry,
        message: M,
        send: F,
    ) -> Result<R>
    where
        M: Clone,
        F: Fn(Request<M>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<R>, Status>>,
    {
        let attempts = match retry {
            Retry::Idempotent => self.retries + 1,
            Retry::Once => 1,
        };
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        let mut last = String::new();
        for attempt in 0..attempts {
            let Some(budget) = deadline.budget(self.hop_timeout) else {
                break;
            };
            let mut request = Request::new(message.clone());
            request.set_timeout(budget);
            match tokio::time::timeout(budget, send(request)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if !is_dependency_failure(&status) => {
                    return Err(Error::Downstream(status))
                }
                Ok(Err(status)) => {
                    last = format!("{:?}: {}", status.code(), status.message());
                    if !is_retryable(&status) {
                        break;
                    }
                }
                Err(_) => {
                    last = format!("no answer within {budget:?}");
                    break;
                }
            }
            if attempt + 1 < attempts {
                tokio::time::sleep(backoff.failed()).await;
            }
        }
        Err(Error::Dependency {
            dependency,
            detail: last,
        })
    }
}

/// Statuses that say nothing about the request, only that the dependency could not answer it.
/// A refusal with a stable reason (ABORTED CONCURRENT_MODIFICATION …) is an answer, passed on;
/// the dependency's own DEPENDENCY_UNAVAILABLE is an outage like any other.
fn is_dependency_failure(status: &Status) -> bool {
    let reason = kopilka_runtime::status::reason_of(status);
    if reason.is_some_and(|r| r != "DEPENDENCY_UNAVAILABLE") {
        return false;
    }
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Unimplemented
    )
}

/// Failures after which the same call may well succeed (connection refused, shed, aborted).
fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Aborted
    )
}

/// One call through [`Deps::call`]: `dep_call!(gw, LEDGER, deadline, Retry::Idempotent,
/// ledger.get_balance(message))`.
#[macro_export]
macro_rules! dep_call {
    ($gw:expr, $dependency:expr, $deadline:expr, $retry:expr, $client:ident . $method:ident ($message:expr)) => {{
        let client = $gw.deps.$client.clone();
        $gw.deps
            .call($dependency, $deadline, $retry, $message, move |request| {
                let mut client = client.clone();
                async move { client.$method(request).await }
            })
            .await
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn a_spent_deadline_leaves_no_budget() {
        let past = Deadline(Some(Instant::now() - Duration::from_millis(1)));
        assert_eq!(past.budget(Duration::from_secs(1)), None);
        let none = Deadline::none();
        assert_eq!(
            none.budget(Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
    }
}
