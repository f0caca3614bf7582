//! The client side of the `kopilka` command: admin commands, receipts rung up by hand and the
//! hidden seeding used by the benchmark, all over the gateway's public gRPC API.
//!
//! - [`Endpoint`] / [`Client`]: the gateway URL and API key, one channel, `authorization` metadata.
//! - [`CliError`] / [`exit_code`]: gRPC errors printed with code, reason, metadata and field
//!   violations (exit code 1).
//! - [`admin`], [`receipt`], [`seed`]: the subcommands.
//! - [`table`]: plain-text tables.

pub mod admin;
pub mod receipt;
pub mod seed;
pub mod table;

use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use kopilka_proto::gateway::admin_service_client::AdminServiceClient;
use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::customer_service_client::CustomerServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint as TonicEndpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// The default gateway address (`kopilka dev`'s gateway).
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:50051";

/// Where the gateway is and which key to call it with.
#[derive(Args, Clone, Debug)]
pub struct Endpoint {
    /// The gateway's gRPC URL.
    #[arg(long, env = "KOPILKA_GATEWAY_URL", default_value = DEFAULT_GATEWAY, global = true)]
    pub gateway: String,
    /// The API key (admin key; a terminal key works for receipts). Never printed.
    #[arg(long, env = "KOPILKA_ADMIN_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// Deadline of each call, in seconds.
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The gateway answered with an error status.
    Status(Status),
    /// Anything else (bad input, unreadable file, no connection …).
    Other(anyhow::Error),
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        CliError::Status(status)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        CliError::Other(error)
    }
}

/// A command's outcome.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Returns early with a [`CliError::Other`].
#[macro_export]
macro_rules! cli_bail {
    ($($arg:tt)*) => { return Err($crate::cli::CliError::Other(anyhow::anyhow!($($arg)*))) };
}

/// Prints the error to stderr and returns the process exit code (1).
pub fn exit_code(error: &CliError) -> i32 {
    match error {
        CliError::Status(status) => eprint!("{}", describe_status(status)),
        CliError::Other(error) => eprintln!("error: {error:#}"),
    }
    1
}

/// `error: INVALID_ARGUMENT (PROGRAM_INVALID): message`, then metadata and one line per field
/// violation.
pub fn describe_status(status: &Status) -> String {
    let mut out = String::new();
    let code = code_name(status.code());
    let reason = kopilka_runtime::status::reason_of(status);
    match &reason {
        Some(reason) => out.push_str(&format!("error: {code} ({reason})")),
        None => out.push_str(&format!("error: {code}")),
    }
    if !status.message().is_empty() {
        out.push_str(&format!(": {}", status.message()));
    }
    out.push('\n');
    if let Some(info) = status.get_details_error_info() {
        let mut metadata: Vec<_> = info.metadata.into_iter().collect();
        metadata.sort();
        for (k, v) in metadata {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    }
    let violations = kopilka_runtime::status::field_violations_of(status);
    if !violations.is_empty() {
        if reason.as_deref() == Some("PROGRAM_INVALID") {
            out.push_str("The program is invalid:\n");
        } else {
            out.push_str("Field violations:\n");
        }
        for (field, description) in violations {
            let field = if field.is_empty() {
                "(request)"
            } else {
                &field
            };
            out.push_str(&format!("  - {field}\n      {description}\n"));
        }
    }
    out
}

/// The gRPC code as its canonical upper-case name.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A connected gateway with the key to call it with.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    auth: MetadataValue<Ascii>,
    timeout: Duration,
}

impl Client {
    /// Connects (lazily) to `url` and remembers `Bearer <key>`.
    pub fn new(url: &str, key: &str, timeout: Duration) -> anyhow::Result<Self> {
        let channel = channel(url)?;
        Self::with_channel(channel, key, timeout)
    }

    /// A client on an existing channel.
    pub fn with_channel(channel: Channel, key: &str, timeout: Duration) -> anyhow::Result<Self> {
        let auth = MetadataValue::from_str(&format!("Bearer {}", key.trim()))
            .map_err(|_| anyhow::anyhow!("the API key has characters not allowed in a header"))?;
        Ok(Client {
            channel,
            auth,
            timeout,
        })
    }

    /// From the command line's `--gateway` / `--key`.
    pub fn from_endpoint(endpoint: &Endpoint) -> anyhow::Result<Self> {
        let Some(key) = endpoint.key.as_deref().filter(|k| !k.trim().is_empty()) else {
            anyhow::bail!("no API key: pass --key or set KOPILKA_ADMIN_KEY");
        };
        Self::new(
            &endpoint.gateway,
            key,
            Duration::from_secs(endpoint.timeout.max(1)),
        )
    }

    /// `message` with the key and the deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.auth.clone());
        request.set_timeout(self.timeout);
        request
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    pub fn checkout(&self) -> CheckoutServiceClient<Channel> {
        CheckoutServiceClient::new(self.channel.clone())
    }

    pub fn customers(&self) -> CustomerServiceClient<Channel> {
        CustomerServiceClient::new(self.channel.clone())
    }
}

/// A lazily connecting channel to `url` (`http://host:port`; a bare `host:port` gets `http://`).
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let endpoint = TonicEndpoint::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("bad gateway URL {url}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// The given request id, or a fresh uuid v4.
pub fn request_id(given: &Option<String>) -> String {
    given
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// A proto timestamp from RFC 3339 text.
pub fn parse_timestamp(text: &str) -> anyhow::Result<kopilka_proto::wkt::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| anyhow::anyhow!("{text:?} is not an RFC 3339 time: {e}"))?;
    Ok(kopilka_runtime::timestamps::to_proto(
        t.with_timezone(&chrono::Utc),
    ))
}

/// A proto timestamp as RFC 3339 (seconds), or `-` when unset.
pub fn show_timestamp(t: &Option<kopilka_proto::wkt::Timestamp>) -> String {
    t.as_ref()
        .and_then(kopilka_runtime::timestamps::from_proto)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".to_owned())
}

/// `value`, or `-` when empty.
pub fn or_dash(value: &str) -> &str {
    if value.is_empty() {
        "-"
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_program_invalid_with_paths() {
        let status = kopilka_runtime::status::invalid_field_with_reason(
            "rules[1].accrue_brackets.brackets[0].percent",
            "BAD_DECIMAL: not a decimal",
            "PROGRAM_INVALID",
        );
        let text = describe_status(&status);
        assert!(text.starts_with("error: INVALID_ARGUMENT (PROGRAM_INVALID)"));
        assert!(text.contains("The program is invalid:"));
        assert!(text.contains("  - rules[1].accrue_brackets.brackets[0].percent\n"));
        assert!(text.contains("BAD_DECIMAL: not a decimal"));
    }

    #[tokio::test]
    async fn auth_header_is_bearer() {
        let client =
            Client::new("127.0.0.1:1", "kpk_secret", Duration::from_secs(1)).expect("client");
        let request = client.request(());
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer kpk_secret"
        );
    }
}
