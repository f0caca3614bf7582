//! Who is calling: the API key in `authorization: Bearer <key>` decides the merchant, the scope
//! and (for a terminal key) the terminal. Verified keys are cached briefly; every call is also
//! counted against its terminal's (or admin key's) rate limit, and its use recorded (the key's
//! `last_used_at`, the terminal's `last_seen_at`) at most once a minute per key.
//!
//! Unknown key ids are remembered apart from real keys, so a flood of made-up ids cannot evict
//! real keys from the cache, and a key id in neither cache costs a database read only within a
//! per-peer budget ([`LOOKUPS_PER_SECOND`]); beyond it the call is RATE_LIMITED unread.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kopilka_runtime::status::Refusal;
use moka::future::Cache;
use tonic::{Code, Request};

use crate::error::{Error, Result};
use crate::keys::{KeyScope, PresentedKey};
use crate::tenancy::{Merchant, Tenancy, Terminal};

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's merchant: every read and write of the call is scoped to it.
    pub merchant: Arc<Merchant>,
    /// The key's public id (safe to log).
    pub key_id: String,
    pub scope: KeyScope,
    /// For a terminal key: its terminal and that terminal's store.
    pub terminal: Option<TerminalRef>,
}

/// A terminal and its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalRef {
    pub terminal_id: String,
    pub store_id: String,
    /// The store's own IANA time zone (Store.time_zone), read with the terminal; empty = the
    /// store has none and the program's settings.time_zone applies. It is the evaluation's
    /// EvaluationInput.time_zone, so a change is seen once the cached key expires.
    pub time_zone: String,
}

impl Caller {
    /// The merchant's id.
    pub fn merchant_id(&self) -> &str {
        &self.merchant.merchant_id
    }
}

#[derive(Debug)]
struct VerifiedKey {
    digest: Vec<u8>,
    caller: Caller,
    revoked: bool,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    terminal_disabled: bool,
}

/// Authenticates calls and applies rate limits.
#[derive(Clone)]
pub struct Auth {
    tenancy: Tenancy,
    /// Keys found in the database.
    keys: Cache<String, Arc<VerifiedKey>>,
    /// Key ids the database does not know (or whose merchant or terminal is gone).
    unknown: Cache<String, ()>,
    /// Database reads for key ids in neither cache, per peer address.
    lookups: Arc<DefaultKeyedRateLimiter<Option<IpAddr>>>,
    /// Keys whose use was recorded in the last [`USE_RESOLUTION`].
    used: Cache<String, ()>,
    terminal_limits: Arc<DefaultKeyedRateLimiter<String>>,
    admin_limits: Arc<DefaultKeyedRateLimiter<String>>,
    /// The limits in requests per second, for RATE_LIMITED's `limit` metadata.
    terminal_rps: u32,
    admin_rps: u32,
}

/// Database reads of not-yet-cached key ids one peer may cause per second (and in a burst).
pub const LOOKUPS_PER_SECOND: u32 = 20;

/// How stale a key's `last_used_at` may be: one write per key per minute, not one per call.
const USE_RESOLUTION: Duration = Duration::from_secs(60);

fn quota(per_second: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_second.max(1)).expect("at least 1"))
}

impl Auth {
    pub fn new(tenancy: Tenancy, key_ttl: Duration, terminal_rps: u32, admin_rps: u32) -> Self {
        Self {
            tenancy,
            keys: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(key_ttl)
                .build(),
            unknown: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(key_ttl)
                .build(),
            lookups: Arc::new(RateLimiter::keyed(quota(LOOKUPS_PER_SECOND))),
            used: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(USE_RESOLUTION)
                .build(),
            terminal_limits: Arc::new(RateLimiter::keyed(quota(terminal_rps))),
            admin_limits: Arc::new(RateLimiter::keyed(quota(admin_rps))),
            terminal_rps: terminal_rps.max(1),
            admin_rps: admin_rps.max(1),
        }
    }

    /// Forgets a cached key at once (after a revocation or a terminal change on this replica).
    pub async fn forget(&self, key_id: &str) {
        self.keys.invalidate(key_id).await;
    }

    /// Forgets every cached key (after disabling a terminal: its keys are found by terminal).
    pub fn forget_all(&self) {
        self.keys.invalidate_all();
        self.unknown.invalidate_all();
    }

    /// The caller, if the key is valid; rate limits applied.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller> {
        let presented = bearer(request)
            .and_then(PresentedKey::parse)
            .ok_or(Error::Unauthenticated)?;
        let peer = request.remote_addr().map(|a| a.ip());
        let verified = self.verified(&presented.key_id, peer).await?;
        let verified = verified.ok_or(Error::Unauthenticated)?;
        let expired = verified
            .expires_at
            .is_some_and(|at| at <= chrono::Utc::now());
        if verified.revoked || expired || !presented.matches(&verified.digest) {
            return Err(Error::Unauthenticated);
        }
        if verified.terminal_disabled {
            let terminal = verified.caller.terminal.as_ref();
            return Err(terminal_disabled(
                terminal.map_or("", |t| t.terminal_id.as_str()),
            ));
        }
        let caller = verified.caller.clone();
        let (limiter, limit, bucket) = match &caller.terminal {
            Some(t) => (
                &self.terminal_limits,
                self.terminal_rps,
                format!("{}/{}", caller.merchant_id(), t.terminal_id),
            ),
            None => (&self.admin_limits, self.admin_rps, caller.key_id.clone()),
        };
        if let Err(not_until) = limiter.check_key(&bucket) {
            return Err(Error::RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                limit,
            });
        }
        self.record_use(&caller).await;
        Ok(caller)
    }

    /// Writes the key's (and terminal's) last use, unless done within the last minute. The
    /// call goes on if the write fails: last use is a hint for administrators.
    async fn record_use(&self, caller: &Caller) {
        if self.used.contains_key(&caller.key_id) {
            return;
        }
        self.used.insert(caller.key_id.clone(), ()).await;
        let terminal = caller.terminal.as_ref().map(|t| t.terminal_id.as_str());
        if let Err(error) = self
            .tenancy
            .record_use(
                caller.merchant_id(),
                &caller.key_id,
                terminal,
                kopilka_runtime::Timestamp::now(),
            )
            .await
        {
            tracing::warn!(%error, key_id = %caller.key_id, "recording a key's last use failed");
        }
    }

    /// A terminal key, or an admin key (which must then name a terminal where one is needed).
    pub async fn terminal_or_admin<T>(&self, request: &Request<T>) -> Result<Caller> {
        let caller = self.authenticate(request).await?;
        match caller.scope {
            KeyScope::Terminal | KeyScope::Admin => Ok(caller),
            KeyScope::Platform => Err(wrong_scope(caller.scope, KeyScope::Terminal)),
        }
    }

    /// An admin key only.
    pub async fn admin<T>(&self, request: &Request<T>) -> Result<Caller> {
        let caller = self.authenticate(request).await?;
        match caller.scope {
            KeyScope::Admin => Ok(caller),
            _ => Err(wrong_scope(caller.scope, KeyScope::Admin)),
        }
    }

    /// The terminal a checkout runs at: the terminal key's own (a different `requested` one is
    /// refused), or for an admin key the one it names.
    pub async fn terminal_for(&self, caller: &Caller, requested: &str) -> Result<TerminalRef> {
        match &caller.terminal {
            Some(own) if requested.is_empty() || requested == own.terminal_id => Ok(own.clone()),
            Some(_) => Err(admin_only(
                "a terminal key acts for its own terminal only; leave terminal_id empty",
            )),
            None if requested.is_empty() => Err(Error::invalid(
                "terminal_id",
                "required with an admin key: name the terminal the receipt is rung up at",
            )),
            None => {
                let terminal = self
                    .tenancy
                    .terminal(caller.merchant_id(), requested)
                    .await?
                    .ok_or_else(|| {
                        Error::not_found("TERMINAL_NOT_FOUND", format!("no terminal {requested}"))
                    })?;
                if terminal.disabled_at.is_some() {
                    return Err(terminal_disabled(requested));
                }
                let time_zone = store_time_zone(&self.tenancy, &terminal).await?;
                Ok(TerminalRef {
                    terminal_id: terminal.terminal_id,
                    store_id: terminal.store_id,
                    time_zone,
                })
            }
        }
    }

    /// The key `key_id`, from the caches or (within `peer`'s lookup budget) the database.
    async fn verified(
        &self,
        key_id: &str,
        peer: Option<IpAddr>,
    ) -> Result<Option<Arc<VerifiedKey>>> {
        if let Some(found) = self.keys.get(key_id).await {
            return Ok(Some(found));
        }
        if self.unknown.contains_key(key_id) {
            return Ok(None);
        }
        let tenancy = self.tenancy.clone();
        let lookups = self.lookups.clone();
        let id = key_id.to_owned();
        // Concurrent first uses of one key share one load, and spend one lookup.
        let loaded = self
            .keys
            .try_get_with(key_id.to_owned(), async move {
                if let Err(not_until) = lookups.check_key(&peer) {
                    return Err(Lookup::Limited(
                        not_until.wait_time_from(DefaultClock::default().now()),
                    ));
                }
                match load(&tenancy, &id).await {
                    Ok(Some(found)) => Ok(Arc::new(found)),
                    Ok(None) => Err(Lookup::Unknown),
                    Err(error) => Err(Lookup::Db(error)),
                }
            })
            .await;
        match loaded {
            Ok(found) => Ok(Some(found)),
            Err(error) => match error.as_ref() {
                Lookup::Unknown => {
                    self.unknown.insert(key_id.to_owned(), ()).await;
                    Ok(None)
                }
                Lookup::Limited(retry_after) => Err(Error::RateLimited {
                    retry_after: *retry_after,
                    limit: LOOKUPS_PER_SECOND,
                }),
                // Shared by every caller that waited on this load: an outage stays an outage.
                Lookup::Db(error) if kopilka_runtime::db::is_unavailable(error) => {
                    Err(Error::Dependency {
                        dependency: "database",
                        detail: error.to_string(),
                    })
                }
                Lookup::Db(error) => Err(Error::Db(sqlx::Error::Protocol(error.to_string()))),
            },
        }
    }
}

/// Why a key id was not loaded.
#[derive(Debug)]
enum Lookup {
    Unknown,
    /// The peer's lookup budget is spent: retry after this.
    Limited(Duration),
    Db(sqlx::Error),
}

/// PERMISSION_DENIED_KEY_SCOPE: `scope` may not call what needs `required` (or a wider scope).
fn wrong_scope(scope: KeyScope, required: KeyScope) -> Error {
    let needed = match required {
        KeyScope::Terminal => "a terminal or admin key",
        KeyScope::Admin => "an admin key",
        KeyScope::Platform => "a platform key",
    };
    Refusal::new(
        Code::PermissionDenied,
        "PERMISSION_DENIED_KEY_SCOPE",
        format!("this call needs {needed}"),
    )
    .with("scope", scope.proto_name())
    .with("required_scope", required.proto_name())
    .into()
}

/// PERMISSION_DENIED_KEY_SCOPE for what a terminal key may not do (`why` says what may).
pub fn admin_only(why: &str) -> Error {
    Refusal::new(Code::PermissionDenied, "PERMISSION_DENIED_KEY_SCOPE", why)
        .with("scope", KeyScope::Terminal.proto_name())
        .with("required_scope", KeyScope::Admin.proto_name())
        .into()
}

fn terminal_disabled(terminal_id: &str) -> Error {
    Refusal::new(
        Code::PermissionDenied,
        "TERMINAL_DISABLED",
        format!("terminal {terminal_id} is disabled"),
    )
    .with("terminal_id", terminal_id)
    .into()
}

fn bearer<T>(request: &Request<T>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The time zone of `terminal`'s store; empty when the store names none.
async fn store_time_zone(tenancy: &Tenancy, terminal: &Terminal) -> Result<String, sqlx::Error> {
    Ok(tenancy
        .store(&terminal.merchant_id, &terminal.store_id)
        .await?
        .map(|store| store.time_zone)
        .unwrap_or_default())
}

/// Reads a key with its merchant and terminal; `None` when unknown.
async fn load(tenancy: &Tenancy, key_id: &str) -> Result<Option<VerifiedKey>, sqlx::Error> {
    let Some(record) = tenancy.key(key_id).await? else {
        return Ok(None);
    };
    let Some(scope) = KeyScope::parse(&record.scope) else {
        return Ok(None);
    };
    let Some(merchant) = tenancy.merchant(&record.merchant_id).await? else {
        return Ok(None);
    };
    let mut terminal_disabled = false;
    let terminal = match (&record.terminal_id, scope) {
        (Some(id), KeyScope::Terminal) => match tenancy.terminal(&record.merchant_id, id).await? {
            Some(t) => {
                terminal_disabled = t.disabled_at.is_some();
                let time_zone = store_time_zone(tenancy, &t).await?;
                Some(TerminalRef {
                    terminal_id: t.terminal_id,
                    store_id: t.store_id,
                    time_zone,
                })
            }
            None => return Ok(None),
        },
        (None, KeyScope::Terminal) => return Ok(None),
        _ => None,
    };
    Ok(Some(VerifiedKey {
        digest: record.secret_digest,
        revoked: record.revoked_at.is_some(),
        expires_at: record.expires_at.map(|t| t.0),
        terminal_disabled,
        caller: Caller {
            merchant: Arc::new(merchant),
            key_id: record.key_id,
            scope,
            terminal,
        },
    }))
}
