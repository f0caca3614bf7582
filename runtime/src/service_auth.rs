//! The credential between Kopilka's services. cards, rules, ledger and notify answer only calls
//! that carry the shared service token (`KOPILKA_SERVICE_TOKEN`) in the `kopilka-service-token`
//! header; the gateway (and every internal caller) attaches it. The check compares SHA-256
//! digests in constant time, so neither the token's length nor its prefix leaks through timing.
//! Health (`grpc.health.v1`) stays open: probes carry no credentials.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// The header the token travels in.
pub const HEADER: &str = "kopilka-service-token";

/// Shortest token accepted: a guessable secret is no credential.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "KOPILKA_SERVICE_TOKEN is not set: internal services answer only calls carrying the \
         shared service token; set the same secret (at least {MIN_TOKEN_CHARS} characters) on \
         every service and the gateway"
    )]
    Missing,
    #[error("the service token must be at least {MIN_TOKEN_CHARS} printable ASCII characters")]
    Malformed,
}

/// The token a caller attaches to every internal call (a tonic interceptor).
#[derive(Clone)]
pub struct ServiceToken {
    value: AsciiMetadataValue,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(…)")
    }
}

impl ServiceToken {
    pub fn new(token: &SecretString) -> Result<Self, TokenError> {
        let raw = token.expose_secret();
        if raw.chars().count() < MIN_TOKEN_CHARS || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Malformed);
        }
        let mut value = AsciiMetadataValue::try_from(raw).map_err(|_| TokenError::Malformed)?;
        value.set_sensitive(true);
        Ok(Self { value })
    }

    /// The token of `configured`, which internal services cannot do without.
    pub fn required(configured: Option<&SecretString>) -> Result<Self, TokenError> {
        Self::new(configured.ok_or(TokenError::Missing)?)
    }

    /// A random token for a suite started in one process (the embedded default, tests).
    pub fn generate() -> SecretString {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    /// Puts the token on a request's metadata.
    pub fn attach(&self, metadata: &mut MetadataMap) {
        metadata.insert(HEADER, self.value.clone());
    }

    /// The server-side check for this token.
    pub fn check(&self) -> RequireToken {
        RequireToken {
            digest: Some(Arc::new(Sha256::digest(self.value.as_bytes()).into())),
        }
    }
}

impl tonic::service::Interceptor for ServiceToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.attach(request.metadata_mut());
        Ok(request)
    }
}

/// A channel to an internal service that carries the token on every call.
pub type ServiceChannel = InterceptedService<Channel, ServiceToken>;

/// A lazily connecting [`ServiceChannel`] to `url`.
pub fn channel(
    url: &str,
    token: ServiceToken,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<ServiceChannel, tonic::transport::Error> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(InterceptedService::new(channel, token))
}

/// A tower layer that refuses calls without the token: UNAUTHENTICATED
/// SERVICE_TOKEN_INVALID. `RequireToken::open()` lets every call through (the gateway, whose
/// callers authenticate with API keys).
#[derive(Clone, Default)]
pub struct RequireToken {
    digest: Option<Arc<[u8; 32]>>,
}

impl RequireToken {
    /// No check.
    pub fn open() -> Self {
        Self::default()
    }

    fn allows<B>(&self, request: &http::Request<B>) -> bool {
        let Some(expected) = &self.digest else {
            return true;
        };
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            return true;
        }
        let Some(presented) = request.headers().get(HEADER) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.ct_eq(expected.as_ref()).into()
    }
}

impl<S> tower::Layer<S> for RequireToken {
    type Service = Checked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            check: self.clone(),
            inner,
        }
    }
}

/// A service behind [`RequireToken`].
#[derive(Clone)]
pub struct Checked<S> {
    check: RequireToken,
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Checked<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if self.check.allows(&request) {
            return Box::pin(self.inner.call(request));
        }
        tracing::warn!(
            path = request.uri().path(),
            "a call without the service token was refused"
        );
        let status = crate::status::with_reason(
            tonic::Code::Unauthenticated,
            "SERVICE_TOKEN_INVALID",
            "internal services answer only calls carrying the service token",
        );
        Box::pin(std::future::ready(Ok(status.into_http())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>, path: &str) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(format!("http://x{path}"));
        if let Some(t) = token {
            builder = builder.header(HEADER, t);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_the_token_passes() {
        let token = ServiceToken::new(&SecretString::from("0123456789abcdef-secret")).unwrap();
        let check = token.check();
        let path = "/kopilka.ledger.v1.LedgerService/Adjust";
        assert!(check.allows(&request(Some("0123456789abcdef-secret"), path)));
        assert!(!check.allows(&request(None, path)));
        assert!(!check.allows(&request(Some("0123456789abcdef-secreT"), path)));
        assert!(!check.allows(&request(Some("0123456789abcdef"), path)));
        // Probes carry no credentials.
        assert!(check.allows(&request(None, "/grpc.health.v1.Health/Check")));
        assert!(RequireToken::open().allows(&request(None, path)));
    }

    #[test]
    fn short_or_missing_tokens_are_refused() {
        assert!(matches!(
            ServiceToken::new(&SecretString::from("short")),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(
            ServiceToken::required(None),
            Err(TokenError::Missing)
        ));
        let generated = ServiceToken::generate();
        assert_eq!(generated.expose_secret().len(), 64);
        assert!(ServiceToken::new(&generated).is_ok());
    }
}
