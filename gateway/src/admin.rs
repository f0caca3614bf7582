//! AdminService (`kopilka.gateway.v1`): merchant administration with an ADMIN key. Every call
//! is scoped to the key's merchant: another merchant's store, terminal or key is NOT_FOUND.
//!
//! Served here: the merchant (read), stores, terminals, API keys — in the gateway's own
//! tables; tiers, forwarded to cards-svc; programs (drafts, validation, publication,
//! activation, ApplyProgram, anonymous previews and comparisons) and categories, forwarded to
//! rules-svc. Mutations are idempotent by `request_id`: the gateway's own by the stored answer
//! (and ids derived from the request id, so concurrent duplicates create one record), the
//! forwarded ones because cards-svc and rules-svc de-duplicate the request id passed on.
//!
//! Not yet served (UNIMPLEMENTED): UpdateMerchantSettings, SimulateProgram, GetMerchantTotals,
//! ExportCustomers, ImportCustomers, CreateWebhook, ListWebhooks, DeleteWebhook; and
//! PreviewProgram / CompareProgramVersions for a real (non-anonymous) buyer.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use kopilka_proto::gateway::admin_service_server::AdminService;
use kopilka_proto::gateway::{self as pb, program_choice};
use kopilka_proto::rules::{self, program_ref};
use kopilka_proto::wkt;
use kopilka_proto::{cards, ledger};
use kopilka_runtime::{status, timestamps, Timestamp};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::auth::Caller;
use crate::checkout::validate::Violations;
use crate::deps::{self, Deadline, Retry};
use crate::error::{Error, Result};
use crate::idempotency;
use crate::keys::{self, KeyScope};
use crate::requests::{check_request_id, MAX_REQUEST_ID};
use crate::tenancy::{ApiKeyListing, NewApiKey, Revocation, Store, Terminal};
use crate::Gateway;

/// Names and free text of stores, terminals and keys: at most this many characters.
const MAX_NAME: usize = 200;
const MAX_ADDRESS: usize = 500;
const MAX_EXTERNAL_ID: usize = 64;
const MAX_PAGE_SIZE: u32 = 100;
const DEFAULT_PAGE_SIZE: u32 = 50;
/// The key's visible prefix: `kpk_` and its id.
const KEY_PREFIX: &str = "kpk_";

/// The AdminService handlers.
#[derive(Clone)]
pub struct AdminApi {
    gw: Gateway,
}

impl AdminApi {
    pub fn new(gw: Gateway) -> Self {
        Self { gw }
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not served by this version of the gateway"
    ))
}

// ---- validation ---------------------------------------------------------------------------

/// Request checks of the admin API.
type Check = Violations;

fn time_zone(check: &mut Check, field: &str, value: &str) {
    if !value.is_empty() && value.parse::<chrono_tz::Tz>().is_err() {
        check.add(field, "must be an IANA time zone, e.g. Europe/Moscow");
    }
}

/// A page size: 0 (the default) to 100.
fn page_size(check: &mut Check, field: &str, value: i32) -> i64 {
    i64::from(check.page_size(field, value, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE))
}

/// A page token of ours: the hex of the last id of the previous page.
fn page_token(check: &mut Check, field: &str, value: &str) -> String {
    match hex::decode(value)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    {
        Some(after) => after,
        None => {
            check.page_token_invalid(field);
            String::new()
        }
    }
}

/// The next page's token when a page came back full.
fn next_token<T>(page: &[T], limit: i64, id: impl Fn(&T) -> &str) -> String {
    match page.last() {
        Some(last) if page.len() as i64 >= limit => hex::encode(id(last)),
        _ => String::new(),
    }
}

/// A short, stable id for what `(merchant, operation, request_id)` creates, so a concurrent
/// duplicate of a create finds the same row instead of making a second one.
fn derived_hex(merchant_id: &str, operation: &str, request_id: &str) -> String {
    let mut hash = Sha256::new();
    for part in [merchant_id, operation, request_id] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..8])
}

fn proto_time(t: Timestamp) -> wkt::Timestamp {
    timestamps::to_proto(t.0)
}

fn from_proto_time(field: &str, t: &wkt::Timestamp, check: &mut Check) -> Option<DateTime<Utc>> {
    let parsed = timestamps::from_proto(t);
    if parsed.is_none() {
        check.add(field, "not a valid timestamp");
    }
    parsed
}

/// A stored answer lacking what it always has.
fn corrupt(what: &str) -> Error {
    Error::Db(sqlx::Error::Protocol(format!(
        "stored answer without {what}"
    )))
}

fn store_not_found(store_id: &str) -> Error {
    Error::not_found("STORE_NOT_FOUND", format!("no store {store_id:?}"))
}

fn terminal_not_found(terminal_id: &str) -> Error {
    Error::not_found("TERMINAL_NOT_FOUND", format!("no terminal {terminal_id:?}"))
}

fn key_not_found(key_id: &str) -> Error {
    Error::not_found("API_KEY_NOT_FOUND", format!("no API key {key_id:?}"))
}

// ---- conversions --------------------------------------------------------------------------

fn store_pb(s: Store) -> pb::Store {
    pb::Store {
        location: match (s.latitude, s.longitude) {
            (Some(latitude), Some(longitude)) => Some(pb::GeoPoint {
                latitude,
                longitude,
            }),
            _ => None,
        },
        store_id: s.store_id,
        name: s.name,
        address: s.address,
        time_zone: s.time_zone,
        wallet_location_text: s.wallet_location_text,
        external_id: s.external_id,
        active: s.active,
        created_at: Some(proto_time(s.created_at)),
    }
}

fn terminal_pb(t: Terminal) -> pb::Terminal {
    pb::Terminal {
        terminal_id: t.terminal_id,
        store_id: t.store_id,
        name: t.name,
        external_id: t.external_id,
        enabled: t.disabled_at.is_none(),
        created_at: Some(proto_time(t.created_at)),
        last_seen_at: t.last_seen_at.map(proto_time),
    }
}

fn key_pb(k: ApiKeyListing) -> pb::ApiKey {
    let scope = match KeyScope::parse(&k.scope) {
        Some(KeyScope::Terminal) => pb::KeyScope::Terminal,
        Some(KeyScope::Admin) => pb::KeyScope::Admin,
        Some(KeyScope::Platform) => pb::KeyScope::Platform,
        None => pb::KeyScope::Unspecified,
    };
    pb::ApiKey {
        prefix: format!("{KEY_PREFIX}{}", k.key_id),
        key_id: k.key_id,
        scope: scope as i32,
        name: k.label,
        terminal_id: k.terminal_id.unwrap_or_default(),
        store_id: k.store_id.unwrap_or_default(),
        created_at: Some(proto_time(k.created_at)),
        expires_at: k.expires_at.map(proto_time),
        last_used_at: k.last_used_at.map(proto_time),
        revoked_at: k.revoked_at.map(proto_time),
    }
}

/// Checks a store's fields (`prefix` is the field path of the store message).
fn check_store(s: &Store, check: &mut Check) {
    check.text("store.name", &s.name, MAX_NAME, true);
    check.text("store.address", &s.address, MAX_ADDRESS, false);
    time_zone(check, "store.time_zone", &s.time_zone);
    check.text(
        "store.wallet_location_text",
        &s.wallet_location_text,
        MAX_NAME,
        false,
    );
    check.text("store.external_id", &s.external_id, MAX_EXTERNAL_ID, false);
    if let (Some(lat), Some(lon)) = (s.latitude, s.longitude) {
        if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
            check.add("store.location.latitude", "must be -90 to 90");
        }
        if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
            check.add("store.location.longitude", "must be -180 to 180");
        }
    }
}

/// The program a preview or comparison uses.
fn program_ref(choice: Option<pb::ProgramChoice>, now: DateTime<Utc>) -> rules::ProgramRef {
    let source = match choice.and_then(|c| c.choice) {
        Some(program_choice::Choice::Version(v)) => program_ref::Source::Version(v),
        Some(program_choice::Choice::Program(p)) => program_ref::Source::Inline(p),
        None => program_ref::Source::ActiveAt(timestamps::to_proto(now)),
    };
    rules::ProgramRef {
        source: Some(source),
    }
}

/// INVALID_ARGUMENT PROGRAM_INVALID with one field violation per ERROR finding, as rules-svc
/// answers a publication of an invalid program.
fn program_invalid(violations: &[rules::Violation]) -> Status {
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
    let errors: Vec<FieldViolation> = violations
        .iter()
        .filter(|v| v.severity() != rules::ViolationSeverity::Warning)
        .map(|v| FieldViolation::new(v.field.clone(), format!("{}: {}", v.code, v.description)))
        .collect();
    let message = format!("the program has {} error(s)", errors.len());
    let mut details = ErrorDetails::with_bad_request(errors);
    details.set_error_info(
        "PROGRAM_INVALID",
        status::ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The merchant's points scale is the ledger's (LedgerSettings.points_scale): the ledger refuses
/// amounts with more decimals, so a program on another scale would promise points that Confirm
/// then cannot book. rules-svc cannot read the ledger, so the gateway checks it on every path
/// that makes a program publishable (ValidateProgram, ApplyProgram, PublishProgram) and reports
/// it as a violation of `settings.points_scale` (INVALID_ARGUMENT PROGRAM_INVALID on a write).
impl AdminApi {
    async fn points_scale_violation(
        &self,
        merchant_id: &str,
        deadline: Deadline,
        program: Option<&rules::Program>,
    ) -> Result<Option<rules::Violation>> {
        let wanted = program
            .and_then(|p| p.settings.as_ref())
            .map_or(0, |s| s.points_scale);
        let answer = crate::dep_call!(
            self.gw,
            deps::LEDGER,
            deadline,
            Retry::Idempotent,
            ledger.get_ledger_settings(ledger::GetLedgerSettingsRequest {
                merchant_id: merchant_id.to_owned(),
            })
        )?;
        let scale = answer.settings.unwrap_or_default().points_scale;
        Ok((wanted != scale).then(|| rules::Violation {
            field: "settings.points_scale".to_owned(),
            code: "OUT_OF_RANGE".to_owned(),
            description: format!(
                "is {wanted}, but the merchant's points have {scale} decimal place(s) \
                 (ledger points_scale); the program must use the merchant's points scale"
            ),
            severity: rules::ViolationSeverity::Error as i32,
        }))
    }

    /// The document of the merchant's version `version`.
    async fn version_program(
        &self,
        merchant_id: &str,
        deadline: Deadline,
        version: u64,
    ) -> Result<Option<rules::Program>> {
        let answer = crate::dep_call!(
            self.gw,
            deps::RULES,
            deadline,
            Retry::Idempotent,
            programs.get_version(rules::GetVersionRequest {
                merchant_id: merchant_id.to_owned(),
                version,
            })
        )?;
        Ok(answer.version.and_then(|v| v.program))
    }
}

// ---- the handlers -------------------------------------------------------------------------

impl AdminApi {
    async fn store_of(&self, caller: &Caller, store_id: &str) -> Result<Store> {
        self.gw
            .tenancy
            .store(caller.merchant_id(), store_id)
            .await?
            .ok_or_else(|| store_not_found(store_id))
    }

    async fn terminal_of(&self, caller: &Caller, terminal_id: &str) -> Result<Terminal> {
        self.gw
            .tenancy
            .terminal(caller.merchant_id(), terminal_id)
            .await?
            .ok_or_else(|| terminal_not_found(terminal_id))
    }

    async fn key_of(&self, caller: &Caller, key_id: &str) -> Result<ApiKeyListing> {
        self.gw
            .tenancy
            .key_listing(caller.merchant_id(), key_id)
            .await?
            .ok_or_else(|| key_not_found(key_id))
    }

    async fn get_merchant_(
        &self,
        request: Request<pb::GetMerchantRequest>,
    ) -> Result<pb::Merchant> {
        let caller = self.gw.auth.admin(&request).await?;
        let m = &caller.merchant;
        Ok(pb::Merchant {
            merchant_id: m.merchant_id.clone(),
            settings: Some(pb::MerchantSettings {
                display_name: m.name.clone(),
                currency: m.currency.clone(),
                time_zone: m.time_zone.clone(),
                locale: "ru".to_owned(),
                default_phone_region: m.phone_region.clone(),
                card_number_formats: Vec::new(),
                referral_max_depth: 3,
                points_scale: 0,
                shortfall_policy: ledger::ShortfallPolicy::AllowNegative as i32,
                max_negative_balance: String::new(),
                offline_receipt_max_age: Some(wkt::Duration {
                    seconds: 30 * 24 * 3600,
                    nanos: 0,
                }),
                terminal_rate_limit: self.gw.config.terminal_rate_limit,
                registration_page_url: String::new(),
                review_page_url: String::new(),
                registration_requires_consent: false,
            }),
            state: pb::MerchantState::Active as i32,
            created_at: Some(proto_time(m.created_at)),
        })
    }

    async fn create_store_(&self, request: Request<pb::CreateStoreRequest>) -> Result<pb::Store> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let merchant_id = caller.merchant_id();
        let mut check = Check::default();
        check.id("request_id", &req.request_id, MAX_REQUEST_ID, true);
        let Some(input) = req.store.clone() else {
            check.add("store", "required");
            return Err(check.into());
        };
        let mut record = Store {
            merchant_id: merchant_id.to_owned(),
            store_id: format!(
                "st_{}",
                derived_hex(merchant_id, "CreateStore", &req.request_id)
            ),
            name: input.name,
            address: input.address,
            time_zone: input.time_zone,
            external_id: input.external_id,
            wallet_location_text: input.wallet_location_text,
            latitude: input.location.map(|l| l.latitude),
            longitude: input.location.map(|l| l.longitude),
            active: true,
            created_at: Timestamp::now(),
        };
        record.name = record.name.trim().to_owned();
        check_store(&record, &mut check);
        check.check()?;
        let tenancy = &self.gw.tenancy;
        let answer: pb::CreateStoreResponse = self
            .gw
            .requests
            .once(
                merchant_id,
                &req.request_id,
                "CreateStore",
                &req,
                || async {
                    tenancy.insert_store(&record).await?;
                    // A concurrent duplicate may have inserted it: either way, answer the row.
                    let stored = tenancy
                        .store(merchant_id, &record.store_id)
                        .await?
                        .ok_or_else(|| store_not_found(&record.store_id))?;
                    Ok(pb::CreateStoreResponse {
                        store: Some(store_pb(stored)),
                    })
                },
            )
            .await?;
        answer.store.ok_or_else(|| corrupt("store"))
    }

    async fn list_stores_(
        &self,
        request: Request<pb::ListStoresRequest>,
    ) -> Result<pb::ListStoresResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let limit = page_size(&mut check, "page_size", req.page_size);
        let after = page_token(&mut check, "page_token", &req.page_token);
        check.check()?;
        let page = self
            .gw
            .tenancy
            .stores_page(caller.merchant_id(), req.include_inactive, &after, limit)
            .await?;
        let next_page_token = next_token(&page, limit, |s| &s.store_id);
        Ok(pb::ListStoresResponse {
            stores: page.into_iter().map(store_pb).collect(),
            next_page_token,
        })
    }

    async fn update_store_(&self, request: Request<pb::UpdateStoreRequest>) -> Result<pb::Store> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let merchant_id = caller.merchant_id();
        let mut check = Check::default();
        check.id("request_id", &req.request_id, MAX_REQUEST_ID, true);
        let input = req.store.clone().unwrap_or_default();
        check.id("store.store_id", &input.store_id, MAX_REQUEST_ID, true);
        let paths: Vec<String> = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            check.add("update_mask", "required: name the fields to change");
        }
        const PATHS: [&str; 7] = [
            "name",
            "address",
            "time_zone",
            "location",
            "wallet_location_text",
            "external_id",
            "active",
        ];
        for (i, path) in paths.iter().enumerate() {
            if !PATHS.contains(&path.as_str()) {
                check.add(
                    format!("update_mask.paths[{i}]"),
                    format!("unknown or read-only field; one of {}", PATHS.join(", ")),
                );
            }
        }
        check.check()?;
        let paths: HashSet<String> = paths.into_iter().collect();
        let answer: pb::UpdateStoreResponse = self
            .gw
            .requests
            .once(
                merchant_id,
                &req.request_id,
                "UpdateStore",
                &req,
                || async {
                    let mut s = self.store_of(&caller, &input.store_id).await?;
                    for path in &paths {
                        match path.as_str() {
                            "name" => s.name = input.name.trim().to_owned(),
                            "address" => s.address = input.address.clone(),
                            "time_zone" => s.time_zone = input.time_zone.clone(),
                            "location" => {
                                s.latitude = input.location.map(|l| l.latitude);
                                s.longitude = input.location.map(|l| l.longitude);
                            }
                            "wallet_location_text" => {
                                s.wallet_location_text = input.wallet_location_text.clone()
                            }
                            "external_id" => s.external_id = input.external_id.clone(),
                            "active" => s.active = input.active,
                            _ => {}
                        }
                    }
                    let mut check = Check::default();
                    check_store(&s, &mut check);
                    check.check()?;
                    if !self.gw.tenancy.update_store(&s).await? {
                        return Err(store_not_found(&s.store_id));
                    }
                    Ok(pb::UpdateStoreResponse {
                        store: Some(store_pb(s)),
                    })
                },
            )
            .await?;
        answer.store.ok_or_else(|| corrupt("store"))
    }

    async fn create_terminal_(
        &self,
        request: Request<pb::CreateTerminalRequest>,
    ) -> Result<pb::Terminal> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let merchant_id = caller.merchant_id();
        let mut check = Check::default();
        check.id("request_id", &req.request_id, MAX_REQUEST_ID, true);
        check.id("store_id", &req.store_id, MAX_REQUEST_ID, true);
        check.text("name", req.name.trim(), MAX_NAME, true);
        check.text("external_id", &req.external_id, MAX_EXTERNAL_ID, false);
        check.check()?;
        let record = Terminal {
            merchant_id: merchant_id.to_owned(),
            terminal_id: format!(
                "tm_{}",
                derived_hex(merchant_id, "CreateTerminal", &req.request_id)
            ),
            store_id: req.store_id.clone(),
            name: req.name.trim().to_owned(),
            external_id: req.external_id.clone(),
            disabled_at: None,
            created_at: Timestamp::now(),
            last_seen_at: None,
        };
        let answer: pb::CreateTerminalResponse = self
            .gw
            .requests
            .once(
                merchant_id,
                &req.request_id,
                "CreateTerminal",
                &req,
                || async {
                    self.store_of(&caller, &record.store_id).await?;
                    self.gw.tenancy.insert_terminal(&record).await?;
                    let stored = self.terminal_of(&caller, &record.terminal_id).await?;
                    Ok(pb::CreateTerminalResponse {
                        terminal: Some(terminal_pb(stored)),
                    })
                },
            )
            .await?;
        answer.terminal.ok_or_else(|| corrupt("terminal"))
    }

    async fn list_terminals_(
        &self,
        request: Request<pb::ListTerminalsRequest>,
    ) -> Result<pb::ListTerminalsResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let mut check = Check::default();
        check.id("store_id", &req.store_id, MAX_REQUEST_ID, false);
        let limit = page_size(&mut check, "page_size", req.page_size);
        let after = page_token(&mut check, "page_token", &req.page_token);
        check.check()?;
        if !req.store_id.is_empty() {
            self.store_of(&caller, &req.store_id).await?;
        }
        let page = self
            .gw
            .tenancy
            .terminals_page(
                caller.merchant_id(),
                &req.store_id,
                req.include_disabled,
                &after,
                limit,
            )
            .await?;
        let next_page_token = next_token(&page, limit, |t| &t.terminal_id);
        Ok(pb::ListTerminalsResponse {
            terminals: page.into_iter().map(terminal_pb).collect(),
            next_page_token,
        })
    }

    /// Disables (`disable`) or enables a terminal; its keys' cached verdicts are dropped.
    async fn set_terminal(
        &self,
        caller: &Caller,
        request_id: &str,
        terminal_id: &str,
        disable: bool,
        request: &impl prost::Message,
    ) -> Result<pb::Terminal> {
        let mut check = Check::default();
        check.id("request_id", request_id, MAX_REQUEST_ID, true);
        check.id("terminal_id", terminal_id, MAX_REQUEST_ID, true);
        check.check()?;
        let operation = if disable {
            "DisableTerminal"
        } else {
            "EnableTerminal"
        };
        let merchant_id = caller.merchant_id();
        let answer: Result<pb::DisableTerminalResponse> = self
            .gw
            .requests
            .once(merchant_id, request_id, operation, request, || async {
                let at = disable.then(Timestamp::now);
                if !self
                    .gw
                    .tenancy
                    .set_terminal_disabled(merchant_id, terminal_id, at)
                    .await?
                {
                    return Err(terminal_not_found(terminal_id));
                }
                let stored = self.terminal_of(caller, terminal_id).await?;
                Ok(pb::DisableTerminalResponse {
                    terminal: Some(terminal_pb(stored)),
                })
            })
            .await;
        // Keys are cached by key id; the terminal's keys are not known here, so drop them all.
        self.gw.auth.forget_all();
        answer?.terminal.ok_or_else(|| corrupt("terminal"))
    }

    async fn issue_api_key_(
        &self,
        request: Request<pb::IssueApiKeyRequest>,
    ) -> Result<pb::IssueApiKeyResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let merchant_id = caller.merchant_id();
        let now = Timestamp::now();
        let mut check = Check::default();
        check.id("request_id", &req.request_id, MAX_REQUEST_ID, true);
        check.text("name", &req.name, MAX_NAME, false);
        let scope = match pb::KeyScope::try_from(req.scope) {
            Ok(pb::KeyScope::Terminal) => {
                check.id("terminal_id", &req.terminal_id, MAX_REQUEST_ID, true);
                Some(KeyScope::Terminal)
            }
            Ok(pb::KeyScope::Admin) => {
                if !req.terminal_id.is_empty() {
                    check.add("terminal_id", "must be empty for an ADMIN key");
                }
                Some(KeyScope::Admin)
            }
            Ok(pb::KeyScope::Platform) => {
                check.add("scope", "PLATFORM keys are not issued here");
                None
            }
            _ => {
                check.add("scope", "required: TERMINAL or ADMIN");
                None
            }
        };
        let expires_at = match &req.expires_at {
            Some(t) => match from_proto_time("expires_at", t, &mut check) {
                Some(at) if at <= now.0 => {
                    check.add("expires_at", "must be in the future");
                    None
                }
                at => at.map(Timestamp::from),
            },
            None => None,
        };
        check.check()?;
        let scope = scope.expect("checked above");
        let key_id = derived_hex(merchant_id, "IssueApiKey", &req.request_id);
        // The secret exists only in this call: never in the stored answer, never in a log.
        let mut issued: Option<String> = None;
        let slot = &mut issued;
        let (req_, caller_, key_id_) = (&req, &caller, &key_id);
        let answer: pb::IssueApiKeyResponse = self
            .gw
            .requests
            .once(
                merchant_id,
                &req.request_id,
                "IssueApiKey",
                &req,
                || async move {
                    let (req, caller, key_id) = (req_, caller_, key_id_);
                    let terminal_id = match scope {
                        KeyScope::Terminal => Some(
                            self.terminal_of(caller, &req.terminal_id)
                                .await?
                                .terminal_id,
                        ),
                        _ => None,
                    };
                    let generated = keys::generate();
                    let plaintext = generated.plaintext.expose_secret();
                    let secret = plaintext
                        .strip_prefix(&format!("{KEY_PREFIX}{}_", generated.key_id))
                        .expect("a generated key reads kpk_<id>_<secret>");
                    let inserted = self
                        .gw
                        .tenancy
                        .insert_key_record(&NewApiKey {
                            merchant_id,
                            key_id,
                            scope,
                            terminal_id: terminal_id.as_deref(),
                            label: &req.name,
                            secret_digest: &generated.secret_digest,
                            created_at: now,
                            expires_at,
                        })
                        .await?;
                    if inserted {
                        *slot = Some(format!("{KEY_PREFIX}{key_id}_{secret}"));
                    }
                    let stored = self.key_of(caller, key_id).await?;
                    Ok(pb::IssueApiKeyResponse {
                        api_key: Some(key_pb(stored)),
                        secret: String::new(),
                    })
                },
            )
            .await?;
        let mut answer = answer;
        if let Some(secret) = issued {
            if answer.api_key.as_ref().is_some_and(|k| k.key_id == key_id) {
                answer.secret = secret;
            }
        }
        Ok(answer)
    }

    async fn list_api_keys_(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<pb::ListApiKeysResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let mut check = Check::default();
        check.id("terminal_id", &req.terminal_id, MAX_REQUEST_ID, false);
        let limit = page_size(&mut check, "page_size", req.page_size);
        let after = page_token(&mut check, "page_token", &req.page_token);
        check.check()?;
        let page = self
            .gw
            .tenancy
            .key_listings_page(
                caller.merchant_id(),
                &req.terminal_id,
                req.include_revoked,
                Timestamp::now(),
                &after,
                limit,
            )
            .await?;
        let next_page_token = next_token(&page, limit, |k| &k.key_id);
        Ok(pb::ListApiKeysResponse {
            api_keys: page.into_iter().map(key_pb).collect(),
            next_page_token,
        })
    }

    async fn revoke_api_key_(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<pb::ApiKey> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let merchant_id = caller.merchant_id();
        let mut check = Check::default();
        check.id("request_id", &req.request_id, MAX_REQUEST_ID, true);
        check.id("key_id", &req.key_id, MAX_REQUEST_ID, true);
        check.check()?;
        let answer: Result<pb::RevokeApiKeyResponse> =
            self.gw
                .requests
                .once(
                    merchant_id,
                    &req.request_id,
                    "RevokeApiKey",
                    &req,
                    || async {
                        match self
                            .gw
                            .tenancy
                            .revoke_key(merchant_id, &req.key_id, Timestamp::now())
                            .await?
                        {
                            Revocation::NotFound => return Err(key_not_found(&req.key_id)),
                            Revocation::LastAdminKey => return Err(Error::precondition(
                                "LAST_ADMIN_KEY",
                                "this is the merchant's last active admin key; issue another first",
                            )),
                            Revocation::Revoked | Revocation::AlreadyRevoked => {}
                        }
                        Ok(pb::RevokeApiKeyResponse {
                            api_key: Some(key_pb(self.key_of(&caller, &req.key_id).await?)),
                        })
                    },
                )
                .await;
        self.gw.auth.forget(&req.key_id).await;
        answer?.api_key.ok_or_else(|| corrupt("key"))
    }

    async fn apply_program_(
        &self,
        request: Request<pb::ApplyProgramRequest>,
    ) -> Result<pb::ApplyProgramResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let deadline = Deadline::of(&request);
        let req = request.into_inner();
        let merchant_id = caller.merchant_id();
        let mut check = Check::default();
        check.id("request_id", &req.request_id, MAX_REQUEST_ID, true);
        if req.program.is_none() {
            check.add("program", "required");
        }
        if let Some(t) = &req.activate_at {
            from_proto_time("activate_at", t, &mut check);
        }
        check.check()?;
        let deps = &self.gw.deps;
        self.gw
            .requests
            .once(
                merchant_id,
                &req.request_id,
                "ApplyProgram",
                &req,
                || async {
                    let validated = deps
                        .call(
                            deps::RULES,
                            deadline,
                            Retry::Idempotent,
                            rules::ValidateProgramRequest {
                                merchant_id: merchant_id.to_owned(),
                                source: Some(rules::validate_program_request::Source::Program(
                                    req.program.clone().unwrap_or_default(),
                                )),
                                tier_codes: Vec::new(),
                            },
                            |r| {
                                let mut c = deps.programs.clone();
                                async move { c.validate_program(r).await }
                            },
                        )
                        .await?;
                    let mut validated = validated;
                    if let Some(v) = self
                        .points_scale_violation(merchant_id, deadline, req.program.as_ref())
                        .await?
                    {
                        validated.valid = false;
                        validated.violations.push(v);
                    }
                    if !validated.valid {
                        return Err(Error::Downstream(program_invalid(&validated.violations)));
                    }
                    let draft = deps
                        .call(
                            deps::RULES,
                            deadline,
                            Retry::Idempotent,
                            rules::CreateDraftRequest {
                                merchant_id: merchant_id.to_owned(),
                                request_id: idempotency::from_caller(
                                    "program-draft",
                                    &req.request_id,
                                    &[],
                                ),
                                source: Some(rules::create_draft_request::Source::Program(
                                    req.program.clone().unwrap_or_default(),
                                )),
                                comment: req.comment.clone(),
                                created_by: caller.key_id.clone(),
                            },
                            |r| {
                                let mut c = deps.programs.clone();
                                async move { c.create_draft(r).await }
                            },
                        )
                        .await?;
                    let draft = draft.version.unwrap_or_default();
                    let published = deps
                        .call(
                            deps::RULES,
                            deadline,
                            Retry::Idempotent,
                            rules::PublishVersionRequest {
                                merchant_id: merchant_id.to_owned(),
                                request_id: idempotency::from_caller(
                                    "program-publish",
                                    &req.request_id,
                                    &[],
                                ),
                                version: draft.version,
                                etag: String::new(),
                                tier_codes: Vec::new(),
                            },
                            |r| {
                                let mut c = deps.programs.clone();
                                async move { c.publish_version(r).await }
                            },
                        )
                        .await?;
                    let mut answer = pb::ApplyProgramResponse {
                        version: published.version,
                        warnings: published.warnings,
                        activation: None,
                        active_now: false,
                    };
                    if !req.skip_activation {
                        let activated = deps
                            .call(
                                deps::RULES,
                                deadline,
                                Retry::Idempotent,
                                rules::ActivateVersionRequest {
                                    merchant_id: merchant_id.to_owned(),
                                    request_id: idempotency::from_caller(
                                        "program-activate",
                                        &req.request_id,
                                        &[],
                                    ),
                                    version: draft.version,
                                    activate_at: req.activate_at,
                                    requested_by: caller.key_id.clone(),
                                },
                                |r| {
                                    let mut c = deps.programs.clone();
                                    async move { c.activate_version(r).await }
                                },
                            )
                            .await?;
                        answer.activation = activated.activation;
                        answer.active_now = activated.active_now;
                        if let Some(v) = answer.version.as_mut() {
                            v.active = activated.active_now;
                        }
                    }
                    Ok(answer)
                },
            )
            .await
    }

    /// The evaluation input of an anonymous preview: lines, promo codes, time, store.
    /// Completes the evaluation input of an anonymous preview (lines, promo codes, time,
    /// store, points to pay with): checked, with the store's time zone or else the program's.
    async fn preview_input(
        &self,
        caller: &Caller,
        buyer: Option<&pb::Buyer>,
        mut input: rules::EvaluationInput,
    ) -> Result<rules::EvaluationInput> {
        if buyer.is_some_and(|b| b.who.is_some()) {
            return Err(Error::Downstream(unimplemented(
                "a preview for a real customer (buyer)",
            )));
        }
        let mut check = Check::default();
        if input.lines.is_empty() || input.lines.len() > 500 {
            check.add("lines", "1 to 500 lines");
        }
        check.id("store_id", &input.store_id, MAX_REQUEST_ID, false);
        if let Some(t) = &input.occurred_at {
            from_proto_time("occurred_at", t, &mut check);
        }
        check.check()?;
        // As at the checkout (TerminalRef.time_zone): the store's zone when it has one, else
        // empty = the program's settings.time_zone.
        input.time_zone = String::new();
        if !input.store_id.is_empty() {
            input.time_zone = self.store_of(caller, &input.store_id).await?.time_zone;
        }
        input
            .occurred_at
            .get_or_insert_with(|| timestamps::to_proto(Utc::now()));
        input.customer = None;
        input.explain = rules::ExplainLevel::Full as i32;
        Ok(input)
    }
}

/// Runs the rules-svc read `$method` of client `$client` with `$message`.
macro_rules! forward {
    ($self:ident, $request:ident, $dep:expr, $client:ident, $method:ident, $message:expr) => {{
        let deps = &$self.gw.deps;
        deps.call(
            $dep,
            Deadline::of(&$request),
            Retry::Idempotent,
            $message,
            |r| {
                let mut c = deps.$client.clone();
                async move { c.$method(r).await }
            },
        )
        .await
    }};
}

fn reply<T>(result: Result<T>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_merchant(
        &self,
        request: Request<pb::GetMerchantRequest>,
    ) -> Reply<pb::GetMerchantResponse> {
        reply(
            self.get_merchant_(request)
                .await
                .map(|merchant| pb::GetMerchantResponse {
                    merchant: Some(merchant),
                }),
        )
    }

    async fn update_merchant_settings(
        &self,
        request: Request<pb::UpdateMerchantSettingsRequest>,
    ) -> Reply<pb::UpdateMerchantSettingsResponse> {
        self.gw.auth.admin(&request).await?;
        Err(unimplemented("UpdateMerchantSettings"))
    }

    async fn create_store(
        &self,
        request: Request<pb::CreateStoreRequest>,
    ) -> Reply<pb::CreateStoreResponse> {
        reply(
            self.create_store_(request)
                .await
                .map(|store| pb::CreateStoreResponse { store: Some(store) }),
        )
    }

    async fn get_store(
        &self,
        request: Request<pb::GetStoreRequest>,
    ) -> Reply<pb::GetStoreResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let mut check = Check::default();
        check.id("store_id", &req.store_id, MAX_REQUEST_ID, true);
        check.check()?;
        let store = self.store_of(&caller, &req.store_id).await?;
        Ok(Response::new(pb::GetStoreResponse {
            store: Some(store_pb(store)),
        }))
    }

    async fn list_stores(
        &self,
        request: Request<pb::ListStoresRequest>,
    ) -> Reply<pb::ListStoresResponse> {
        reply(self.list_stores_(request).await)
    }

    async fn update_store(
        &self,
        request: Request<pb::UpdateStoreRequest>,
    ) -> Reply<pb::UpdateStoreResponse> {
        reply(
            self.update_store_(request)
                .await
                .map(|store| pb::UpdateStoreResponse { store: Some(store) }),
        )
    }

    async fn create_terminal(
        &self,
        request: Request<pb::CreateTerminalRequest>,
    ) -> Reply<pb::CreateTerminalResponse> {
        reply(
            self.create_terminal_(request)
                .await
                .map(|terminal| pb::CreateTerminalResponse {
                    terminal: Some(terminal),
                }),
        )
    }

    async fn list_terminals(
        &self,
        request: Request<pb::ListTerminalsRequest>,
    ) -> Reply<pb::ListTerminalsResponse> {
        reply(self.list_terminals_(request).await)
    }

    async fn disable_terminal(
        &self,
        request: Request<pb::DisableTerminalRequest>,
    ) -> Reply<pb::DisableTerminalResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let terminal = self
            .set_terminal(&caller, &req.request_id, &req.terminal_id, true, &req)
            .await?;
        Ok(Response::new(pb::DisableTerminalResponse {
            terminal: Some(terminal),
        }))
    }

    async fn enable_terminal(
        &self,
        request: Request<pb::EnableTerminalRequest>,
    ) -> Reply<pb::EnableTerminalResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.into_inner();
        let terminal = self
            .set_terminal(&caller, &req.request_id, &req.terminal_id, false, &req)
            .await?;
        Ok(Response::new(pb::EnableTerminalResponse {
            terminal: Some(terminal),
        }))
    }

    async fn issue_api_key(
        &self,
        request: Request<pb::IssueApiKeyRequest>,
    ) -> Reply<pb::IssueApiKeyResponse> {
        reply(self.issue_api_key_(request).await)
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Reply<pb::ListApiKeysResponse> {
        reply(self.list_api_keys_(request).await)
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Reply<pb::RevokeApiKeyResponse> {
        reply(
            self.revoke_api_key_(request)
                .await
                .map(|key| pb::RevokeApiKeyResponse { api_key: Some(key) }),
        )
    }

    async fn upsert_tier(
        &self,
        request: Request<pb::UpsertTierRequest>,
    ) -> Reply<pb::UpsertTierResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        check_request_id("request_id", &request.get_ref().request_id)?;
        let req = request.get_ref().clone();
        let out = forward!(
            self,
            request,
            deps::CARDS,
            tiers,
            upsert_tier,
            cards::UpsertTierRequest {
                merchant_id: caller.merchant_id().to_owned(),
                request_id: idempotency::from_caller("upsert_tier", &req.request_id, &[]),
                tier: req.tier,
            }
        )?;
        Ok(Response::new(pb::UpsertTierResponse {
            tier: out.tier,
            created: out.created,
        }))
    }

    async fn list_tiers(
        &self,
        request: Request<pb::ListTiersRequest>,
    ) -> Reply<pb::ListTiersResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let out = forward!(
            self,
            request,
            deps::CARDS,
            tiers,
            list_tiers,
            cards::ListTiersRequest {
                merchant_id: caller.merchant_id().to_owned(),
            }
        )?;
        Ok(Response::new(pb::ListTiersResponse { tiers: out.tiers }))
    }

    async fn delete_tier(
        &self,
        request: Request<pb::DeleteTierRequest>,
    ) -> Reply<pb::DeleteTierResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        check_request_id("request_id", &request.get_ref().request_id)?;
        let req = request.get_ref().clone();
        let out = forward!(
            self,
            request,
            deps::CARDS,
            tiers,
            delete_tier,
            cards::DeleteTierRequest {
                merchant_id: caller.merchant_id().to_owned(),
                request_id: idempotency::from_caller("delete_tier", &req.request_id, &[]),
                code: req.code,
            }
        )?;
        Ok(Response::new(pb::DeleteTierResponse { code: out.code }))
    }

    async fn create_program_draft(
        &self,
        request: Request<pb::CreateProgramDraftRequest>,
    ) -> Reply<pb::CreateProgramDraftResponse> {
        use kopilka_proto::gateway::create_program_draft_request::Source as In;
        use rules::create_draft_request::Source as Out;
        let caller = self.gw.auth.admin(&request).await?;
        check_request_id("request_id", &request.get_ref().request_id)?;
        let req = request.get_ref().clone();
        let source = req.source.map(|s| match s {
            In::Program(p) => Out::Program(p),
            In::CopyOfVersion(v) => Out::CopyOfVersion(v),
        });
        let out = forward!(
            self,
            request,
            deps::RULES,
            programs,
            create_draft,
            rules::CreateDraftRequest {
                merchant_id: caller.merchant_id().to_owned(),
                request_id: idempotency::from_caller("create_draft", &req.request_id, &[]),
                source,
                comment: req.comment,
                created_by: caller.key_id.clone(),
            }
        )?;
        Ok(Response::new(pb::CreateProgramDraftResponse {
            version: out.version,
        }))
    }

    async fn update_program_draft(
        &self,
        request: Request<pb::UpdateProgramDraftRequest>,
    ) -> Reply<pb::UpdateProgramDraftResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        check_request_id("request_id", &request.get_ref().request_id)?;
        let req = request.get_ref().clone();
        let out = forward!(
            self,
            request,
            deps::RULES,
            programs,
            update_draft,
            rules::UpdateDraftRequest {
                merchant_id: caller.merchant_id().to_owned(),
                request_id: idempotency::from_caller("update_draft", &req.request_id, &[]),
                version: req.version,
                program: req.program,
                etag: req.etag,
                comment: req.comment,
            }
        )?;
        Ok(Response::new(pb::UpdateProgramDraftResponse {
            version: out.version,
        }))
    }

    async fn validate_program(
        &self,
        request: Request<pb::ValidateProgramRequest>,
    ) -> Reply<pb::ValidateProgramResponse> {
        use kopilka_proto::gateway::validate_program_request::Source as In;
        use rules::validate_program_request::Source as Out;
        let caller = self.gw.auth.admin(&request).await?;
        let source = request.get_ref().source.clone().map(|s| match s {
            In::Program(p) => Out::Program(p),
            In::Version(v) => Out::Version(v),
        });
        let out = forward!(
            self,
            request,
            deps::RULES,
            programs,
            validate_program,
            rules::ValidateProgramRequest {
                merchant_id: caller.merchant_id().to_owned(),
                source,
                tier_codes: Vec::new(),
            }
        )?;
        let mut out = out;
        let deadline = Deadline::of(&request);
        let program = match &request.get_ref().source {
            Some(In::Program(p)) => Some(p.clone()),
            Some(In::Version(v)) => {
                self.version_program(caller.merchant_id(), deadline, *v)
                    .await?
            }
            None => None,
        };
        if program.is_some() {
            if let Some(v) = self
                .points_scale_violation(caller.merchant_id(), deadline, program.as_ref())
                .await?
            {
                out.valid = false;
                out.violations.push(v);
            }
        }
        Ok(Response::new(pb::ValidateProgramResponse {
            valid: out.valid,
            violations: out.violations,
        }))
    }

    async fn publish_program(
        &self,
        request: Request<pb::PublishProgramRequest>,
    ) -> Reply<pb::PublishProgramResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        check_request_id("request_id", &request.get_ref().request_id)?;
        let req = request.get_ref().clone();
        let deadline = Deadline::of(&request);
        let program = self
            .version_program(caller.merchant_id(), deadline, req.version)
            .await?;
        if program.is_some() {
            if let Some(v) = self
                .points_scale_violation(caller.merchant_id(), deadline, program.as_ref())
                .await?
            {
                return Err(Error::Downstream(program_invalid(&[v])).into());
            }
        }
        let out = forward!(
            self,
            request,
            deps::RULES,
            programs,
            publish_version,
            rules::PublishVersionRequest {
                merchant_id: caller.merchant_id().to_owned(),
                request_id: idempotency::from_caller("publish_version", &req.request_id, &[]),
                version: req.version,
                etag: req.etag,
                tier_codes: Vec::new(),
            }
        )?;
        Ok(Response::new(pb::PublishProgramResponse {
            version: out.version,
            warnings: out.warnings,
        }))
    }

    async fn activate_program(
        &self,
        request: Request<pb::ActivateProgramRequest>,
    ) -> Reply<pb::ActivateProgramResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        check_request_id("request_id", &request.get_ref().request_id)?;
        let req = request.get_ref().clone();
        let out = forward!(
            self,
            request,
            deps::RULES,
            programs,
            activate_version,
            rules::ActivateVersionRequest {
                merchant_id: caller.merchant_id().to_owned(),
                request_id: idempotency::from_caller("activate_version", &req.request_id, &[]),
                version: req.version,
                activate_at: req.activate_at,
                requested_by: caller.key_id.clone(),
            }
        )?;
        Ok(Response::new(pb::ActivateProgramResponse {
            activation: out.activation,
            active_now: out.active_now,
        }))
    }

    async fn cancel_program_activation(
        &self,
        request: Request<pb::CancelProgramActivationRequest>,
    ) -> Reply<pb::CancelProgramActivationResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        check_request_id("request_id", &request.get_ref().request_id)?;
        let req = request.get_ref().clone();
        let out = forward!(
            self,
            request,
            deps::RULES,
            programs,
            cancel_activation,
            rules::CancelActivationRequest {
                merchant_id: caller.merchant_id().to_owned(),
                request_id: idempotency::from_caller("cancel_activation", &req.request_id, &[]),
                activation_id: req.activation_id,
            }
        )?;
        Ok(Response::new(pb::CancelProgramActivationResponse {
            activation: out.activation,
        }))
    }

    async fn apply_program(
        &self,
        request: Request<pb::ApplyProgramRequest>,
    ) -> Reply<pb::ApplyProgramResponse> {
        reply(self.apply_program_(request).await)
    }

    async fn list_program_versions(
        &self,
        request: Request<pb::ListProgramVersionsRequest>,
    ) -> Reply<pb::ListProgramVersionsResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.get_ref().clone();
        let mut check = Check::default();
        page_size(&mut check, "page_size", req.page_size);
        check.check()?;
        let out = forward!(
            self,
            request,
            deps::RULES,
            programs,
            list_versions,
            rules::ListVersionsRequest {
                merchant_id: caller.merchant_id().to_owned(),
                state: req.state,
                include_program: false,
                page_size: if req.page_size == 0 {
                    20
                } else {
                    req.page_size
                },
                page_token: req.page_token,
            }
        )?;
        Ok(Response::new(pb::ListProgramVersionsResponse {
            versions: out.versions,
            next_page_token: out.next_page_token,
        }))
    }

    async fn get_program_version(
        &self,
        request: Request<pb::GetProgramVersionRequest>,
    ) -> Reply<pb::GetProgramVersionResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let version = request.get_ref().version;
        let out = forward!(
            self,
            request,
            deps::RULES,
            programs,
            get_version,
            rules::GetVersionRequest {
                merchant_id: caller.merchant_id().to_owned(),
                version,
            }
        )?;
        Ok(Response::new(pb::GetProgramVersionResponse {
            version: out.version,
        }))
    }

    async fn get_active_program(
        &self,
        request: Request<pb::GetActiveProgramRequest>,
    ) -> Reply<pb::GetActiveProgramResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let at = request.get_ref().at;
        let out = forward!(
            self,
            request,
            deps::RULES,
            programs,
            get_active_version,
            rules::GetActiveVersionRequest {
                merchant_id: caller.merchant_id().to_owned(),
                at,
                include_program: true,
            }
        )?;
        Ok(Response::new(pb::GetActiveProgramResponse {
            version: out.version,
            scheduled: out.scheduled,
        }))
    }

    async fn preview_program(
        &self,
        request: Request<pb::PreviewProgramRequest>,
    ) -> Reply<pb::PreviewProgramResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.get_ref().clone();
        let input = self
            .preview_input(
                &caller,
                req.buyer.as_ref(),
                rules::EvaluationInput {
                    lines: req.lines,
                    promo_codes: req.promo_codes,
                    occurred_at: req.occurred_at,
                    store_id: req.store_id,
                    redeem_points: req.redeem_points,
                    ..Default::default()
                },
            )
            .await?;
        let out = forward!(
            self,
            request,
            deps::RULES,
            evaluation,
            dry_run,
            rules::DryRunRequest {
                merchant_id: caller.merchant_id().to_owned(),
                program: Some(program_ref(req.program, Utc::now())),
                input: Some(input),
                tier_codes: Vec::new(),
            }
        )?;
        Ok(Response::new(pb::PreviewProgramResponse {
            result: out.result,
            violations: out.violations,
        }))
    }

    async fn compare_program_versions(
        &self,
        request: Request<pb::CompareProgramVersionsRequest>,
    ) -> Reply<pb::CompareProgramVersionsResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.get_ref().clone();
        if req.candidate.as_ref().is_none_or(|c| c.choice.is_none()) {
            return Err(Error::invalid("candidate", "required: a version or a program").into());
        }
        let input = self
            .preview_input(
                &caller,
                req.buyer.as_ref(),
                rules::EvaluationInput {
                    lines: req.lines,
                    promo_codes: req.promo_codes,
                    occurred_at: req.occurred_at,
                    store_id: req.store_id,
                    redeem_points: String::new(),
                    ..Default::default()
                },
            )
            .await?;
        let now = Utc::now();
        let out = forward!(
            self,
            request,
            deps::RULES,
            evaluation,
            compare_versions,
            rules::CompareVersionsRequest {
                merchant_id: caller.merchant_id().to_owned(),
                base: Some(program_ref(req.base, now)),
                candidate: Some(program_ref(req.candidate, now)),
                input: Some(input),
            }
        )?;
        Ok(Response::new(pb::CompareProgramVersionsResponse {
            base: out.base,
            candidate: out.candidate,
            lines: out.lines,
        }))
    }

    async fn simulate_program(
        &self,
        request: Request<pb::SimulateProgramRequest>,
    ) -> Reply<pb::SimulateProgramResponse> {
        self.gw.auth.admin(&request).await?;
        Err(unimplemented("SimulateProgram"))
    }

    async fn upsert_categories(
        &self,
        request: Request<pb::UpsertCategoriesRequest>,
    ) -> Reply<pb::UpsertCategoriesResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        check_request_id("request_id", &request.get_ref().request_id)?;
        let req = request.get_ref().clone();
        let out = forward!(
            self,
            request,
            deps::RULES,
            catalog,
            upsert_categories,
            rules::UpsertCategoriesRequest {
                merchant_id: caller.merchant_id().to_owned(),
                request_id: idempotency::from_caller("upsert_categories", &req.request_id, &[]),
                categories: req.categories,
            }
        )?;
        Ok(Response::new(pb::UpsertCategoriesResponse {
            created: out.created,
            updated: out.updated,
        }))
    }

    async fn list_categories(
        &self,
        request: Request<pb::ListCategoriesRequest>,
    ) -> Reply<pb::ListCategoriesResponse> {
        let caller = self.gw.auth.admin(&request).await?;
        let req = request.get_ref().clone();
        let out = forward!(
            self,
            request,
            deps::RULES,
            catalog,
            list_categories,
            rules::ListCategoriesRequest {
                merchant_id: caller.merchant_id().to_owned(),
                parent_id: req.parent_id,
                page_size: req.page_size,
                page_token: req.page_token,
            }
        )?;
        Ok(Response::new(pb::ListCategoriesResponse {
            categories: out.categories,
            next_page_token: out.next_page_token,
        }))
    }

    async fn get_merchant_totals(
        &self,
        request: Request<pb::GetMerchantTotalsRequest>,
    ) -> Reply<pb::GetMerchantTotalsResponse> {
        self.gw.auth.admin(&request).await?;
        Err(unimplemented("GetMerchantTotals"))
    }

    type ExportCustomersStream =
        tokio_stream::Empty<std::result::Result<pb::ExportCustomersResponse, Status>>;

    async fn export_customers(
        &self,
        request: Request<pb::ExportCustomersRequest>,
    ) -> Reply<Self::ExportCustomersStream> {
        self.gw.auth.admin(&request).await?;
        Err(unimplemented("ExportCustomers"))
    }

    async fn import_customers(
        &self,
        request: Request<Streaming<pb::ImportCustomersRequest>>,
    ) -> Reply<pb::ImportCustomersResponse> {
        self.gw.auth.admin(&request).await?;
        Err(unimplemented("ImportCustomers"))
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Reply<pb::CreateWebhookResponse> {
        self.gw.auth.admin(&request).await?;
        Err(unimplemented("CreateWebhook"))
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Reply<pb::ListWebhooksResponse> {
        self.gw.auth.admin(&request).await?;
        Err(unimplemented("ListWebhooks"))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Reply<pb::DeleteWebhookResponse> {
        self.gw.auth.admin(&request).await?;
        Err(unimplemented("DeleteWebhook"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derived_hex("m1", "CreateStore", "r1");
        assert_eq!(a, derived_hex("m1", "CreateStore", "r1"));
        assert_eq!(a.len(), 16);
        assert_ne!(a, derived_hex("m2", "CreateStore", "r1"));
        assert_ne!(a, derived_hex("m1", "CreateTerminal", "r1"));
        assert_ne!(derived_hex("m1", "ab", "c"), derived_hex("m1", "a", "bc"));
    }

    #[test]
    fn page_tokens_round_trip_and_bad_ones_are_refused() {
        let mut check = Check::default();
        assert_eq!(page_token(&mut check, "t", &hex::encode("st_1")), "st_1");
        assert!(check.is_empty());
        page_token(&mut check, "t", "zz");
        assert_eq!(check.reason(), "PAGE_TOKEN_INVALID");
        assert_eq!(check.fields().len(), 1);
        let mut check = Check::default();
        assert_eq!(page_size(&mut check, "p", 0), 50);
        page_size(&mut check, "p", 101);
        page_size(&mut check, "p", -1);
        assert_eq!(check.fields().len(), 2);
    }
}
