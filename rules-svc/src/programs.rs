//! [`Programs`]: the state every rules-svc RPC shares — the store, the per-replica
//! [`ProgramCache`] and the cards-svc client — with the operations of ProgramService and
//! CatalogService, and [`Programs::resolve`], which turns an evaluation's `ProgramRef` into a
//! compiled plan.
//!
//! Mutations run through [`Programs::mutate`]: idempotent by request_id (the first answer is
//! stored with a digest of the request, in the same transaction as the change), retried when two
//! writers collide, and followed by dropping what this replica caches for the merchant (other
//! replicas learn of it from the change feed, see [`crate::cache`]).

use kopilka_runtime::timestamps::to_proto as timestamp;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kopilka_proto::cards::tier_service_client::TierServiceClient;
use kopilka_proto::cards::ListTiersRequest;
use kopilka_proto::rules::{self as pb, Program, ProgramRef, VersionState, Violation};
use kopilka_proto::wkt::Timestamp as PbTimestamp;
use kopilka_runtime::service_auth::ServiceChannel;
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::Violations;
use kopilka_runtime::Timestamp;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::cache::{ProgramCache, Schedule};
use crate::catalog::Catalog;
use crate::catalog_store::{self, CategoryRow};
use crate::error::Error;
use crate::plan::{fingerprint, Plan};
use crate::store::{is_retryable, ActivationRow, Claim, Store, Tx, VersionRow, DRAFT, PUBLISHED};
use crate::validate::{validate, Known, Report};

/// Longest id accepted (merchant, request, activation).
pub const MAX_ID: usize = 128;
/// Longest author's note.
pub const MAX_COMMENT: usize = 2000;
/// Longest author or requester name.
pub const MAX_AUTHOR: usize = 128;
/// Largest encoded program document (far above the contract's 500 rules).
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// How many times a mutation whose transaction collided with another is run again.
const RETRIES: u32 = 5;

/// A program ready to evaluate, from [`Programs::resolve`].
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The compiled plan (shared with the cache for published versions).
    pub plan: Arc<Plan>,
    /// PUBLISHED or DRAFT for stored versions; UNSPECIFIED for an inline document.
    pub state: VersionState,
    /// Warnings of a draft or inline document (validated on every resolve); empty for a
    /// published version, which passed validation when it was published.
    pub violations: Vec<Violation>,
}

/// The shared state of rules-svc. Cloning shares it (the evaluation API holds a clone).
#[derive(Clone)]
pub struct Programs {
    store: Store,
    cache: ProgramCache,
    cards: Option<TierServiceClient<ServiceChannel>>,
}

/// The mutations [`Programs::mutate`] runs.
enum Command<'a> {
    CreateDraft(&'a pb::CreateDraftRequest),
    UpdateDraft(&'a pb::UpdateDraftRequest),
    DeleteDraft(&'a pb::DeleteDraftRequest),
    /// With the tier codes to check against (`None` = not checked), fetched before the
    /// transaction so that no database lock is held across a call to cards-svc.
    Publish(&'a pb::PublishVersionRequest, Option<Vec<String>>),
    Activate(&'a pb::ActivateVersionRequest),
    Cancel(&'a pb::CancelActivationRequest),
    UpsertCategories(&'a pb::UpsertCategoriesRequest),
    DeleteCategories(&'a pb::DeleteCategoriesRequest),
}

impl Command<'_> {
    fn name(&self) -> &'static str {
        match self {
            Command::CreateDraft(_) => "CreateDraft",
            Command::UpdateDraft(_) => "UpdateDraft",
            Command::DeleteDraft(_) => "DeleteDraft",
            Command::Publish(..) => "PublishVersion",
            Command::Activate(_) => "ActivateVersion",
            Command::Cancel(_) => "CancelActivation",
            Command::UpsertCategories(_) => "UpsertCategories",
            Command::DeleteCategories(_) => "DeleteCategories",
        }
    }

    /// Whether it changes what the cache holds for the merchant (schedule or catalog).
    fn changes_cached(&self) -> bool {
        matches!(
            self,
            Command::Activate(_)
                | Command::Cancel(_)
                | Command::UpsertCategories(_)
                | Command::DeleteCategories(_)
        )
    }

    /// The checks that need no database.
    fn check(&self, v: &mut Violations) {
        match self {
            Command::CreateDraft(r) => {
                match &r.source {
                    None => v.add("source", "set program or copy_of_version"),
                    Some(pb::create_draft_request::Source::Program(p)) => {
                        check_document("program", p, v)
                    }
                    Some(pb::create_draft_request::Source::CopyOfVersion(n)) => {
                        check_version("copy_of_version", *n, v)
                    }
                }
                check_len("comment", &r.comment, MAX_COMMENT, v);
                check_len("created_by", &r.created_by, MAX_AUTHOR, v);
            }
            Command::UpdateDraft(r) => {
                check_version("version", r.version, v);
                match &r.program {
                    None => v.add("program", "is required"),
                    Some(p) => check_document("program", p, v),
                }
                check_len("etag", &r.etag, MAX_ID, v);
                check_len("comment", &r.comment, MAX_COMMENT, v);
            }
            Command::DeleteDraft(r) => check_version("version", r.version, v),
            Command::Publish(r, _) => {
                check_version("version", r.version, v);
                check_len("etag", &r.etag, MAX_ID, v);
                check_tier_codes(&r.tier_codes, v);
            }
            Command::Activate(r) => {
                check_version("version", r.version, v);
                if let Some(t) = &r.activate_at {
                    if instant(t).is_none() {
                        v.add("activate_at", "is not a valid timestamp");
                    }
                }
                check_len("requested_by", &r.requested_by, MAX_AUTHOR, v);
            }
            Command::Cancel(r) => check_id("activation_id", &r.activation_id, v),
            Command::UpsertCategories(r) => catalog_store::check_upsert(&r.categories, v),
            Command::DeleteCategories(r) => {
                if r.category_ids.is_empty() {
                    v.add(
                        "category_ids",
                        format!("must hold 1 to {} ids", catalog_store::MAX_BATCH),
                    );
                } else if r.category_ids.len() > catalog_store::MAX_BATCH {
                    v.limit("category_ids", catalog_store::MAX_BATCH, "ids");
                }
                for (i, id) in r.category_ids.iter().enumerate() {
                    catalog_store::check_category_id(&format!("category_ids[{i}]"), id, v);
                }
            }
        }
    }
}

// ---- small checks and conversions -----------------------------------------------------------

fn check_id(field: &str, value: &str, v: &mut Violations) {
    if value.is_empty() {
        v.add(field, "is required");
    } else {
        check_len(field, value, MAX_ID, v);
    }
}

/// At most `max` characters (LIMIT_EXCEEDED beyond).
fn check_len(field: &str, value: &str, max: usize, v: &mut Violations) {
    if value.chars().count() > max {
        v.limit(field, max, "characters");
    }
}

fn check_version(field: &str, version: u64, v: &mut Violations) {
    if version == 0 || i64::try_from(version).is_err() {
        v.add(field, "must be a version number (1 or more)");
    }
}

fn check_document(field: &str, program: &Program, v: &mut Violations) {
    if program.encoded_len() > MAX_DOCUMENT_BYTES {
        v.limit(field, MAX_DOCUMENT_BYTES, "bytes encoded (1 MiB)");
    }
}

fn check_tier_codes(codes: &[String], v: &mut Violations) {
    for (i, code) in codes.iter().enumerate() {
        let field = format!("tier_codes[{i}]");
        if code.is_empty() {
            v.add(field, "must be 1 to 32 characters");
        } else {
            check_len(&field, code, 32, v);
        }
    }
}

fn check_merchant(merchant: &str) -> Result<(), Error> {
    let mut v = Violations::new();
    check_id("merchant_id", merchant, &mut v);
    Ok(v.check()?)
}

/// A checked version number as stored (the checks above keep it in range).
fn db_version(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

fn digest(message: &impl Message) -> Vec<u8> {
    Sha256::digest(message.encode_to_vec()).to_vec()
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A request timestamp as an instant with microsecond precision (as stored).
fn instant(t: &PbTimestamp) -> Option<DateTime<Utc>> {
    kopilka_runtime::timestamps::from_proto(t).map(|d| Timestamp::from(d).0)
}

fn version_not_found(version: u64) -> Error {
    Refusal::not_found(
        "VERSION_NOT_FOUND",
        format!("program version {version} not found"),
    )
    .with("version", version)
    .into()
}

fn key_reused(request_id: &str) -> Error {
    Refusal::precondition(
        "IDEMPOTENCY_KEY_REUSED",
        format!("request_id `{request_id}` was used for a different request"),
    )
    .with("request_id", request_id)
    .into()
}

fn immutable(version: i64) -> Error {
    Refusal::precondition(
        "VERSION_IMMUTABLE",
        format!("version {version} is published and cannot change; create a draft from it"),
    )
    .with("version", version)
    .into()
}

fn concurrent_modification(version: i64) -> Error {
    Refusal::new(
        tonic::Code::Aborted,
        "CONCURRENT_MODIFICATION",
        format!("version {version} changed since it was read; read it again"),
    )
    .with("version", version)
    .into()
}

fn no_active_program(at: DateTime<Utc>) -> Error {
    Refusal::precondition(
        "NO_ACTIVE_PROGRAM",
        format!("no program version is active at {}", at.to_rfc3339()),
    )
    .into()
}

fn not_published(version: i64) -> Error {
    Refusal::precondition(
        "PROGRAM_NOT_PUBLISHED",
        format!("version {version} is a draft; publish it first"),
    )
    .with("version", version)
    .into()
}

fn page_token_invalid() -> Error {
    let mut v = Violations::new();
    v.page_token_invalid("page_token");
    v.into()
}

/// `page_size`: 0 is `default`; negative or above `max` is refused (LIMIT_EXCEEDED above).
fn page_size(size: i32, default: u32, max: u32) -> Result<i64, Error> {
    let mut v = Violations::new();
    let size = v.page_size("page_size", size, default, max);
    v.check()?;
    Ok(i64::from(size))
}

fn state_of(row: &VersionRow) -> VersionState {
    if row.is_published() {
        VersionState::Published
    } else {
        VersionState::Draft
    }
}

fn activation_proto(a: &ActivationRow) -> pb::Activation {
    pb::Activation {
        activation_id: a.activation_id.clone(),
        version: u64::try_from(a.version).unwrap_or_default(),
        activate_at: Some(timestamp(a.activate_at.0)),
        requested_at: Some(timestamp(a.created_at.0)),
        requested_by: a.requested_by.clone(),
    }
}

/// The API's version: the row, with its document if asked, `active` if it is `active_now`.
fn version_proto(
    row: &VersionRow,
    include_program: bool,
    active_now: Option<i64>,
) -> Result<pb::ProgramVersion, Error> {
    Ok(pb::ProgramVersion {
        version: u64::try_from(row.version).unwrap_or_default(),
        state: state_of(row) as i32,
        program: if include_program {
            Some(Program::decode(row.document.as_slice())?)
        } else {
            None
        },
        etag: row.etag.clone(),
        fingerprint: row.fingerprint.clone(),
        based_on_version: u64::try_from(row.based_on_version).unwrap_or_default(),
        comment: row.comment.clone(),
        created_by: row.created_by.clone(),
        created_at: Some(timestamp(row.created_at.0)),
        updated_at: Some(timestamp(row.updated_at.0)),
        published_at: row.published_at.map(|t| timestamp(t.0)),
        active: active_now == Some(row.version),
        needs: match &row.needs {
            Some(bytes) => Some(pb::EvaluationNeeds::decode(bytes.as_slice())?),
            None => None,
        },
    })
}

/// Validates against the merchant's tiers (if known) and catalog.
fn check_program(program: &Program, tiers: Option<&[String]>, catalog: &Catalog) -> Report {
    validate(
        program,
        &Known {
            tier_codes: tiers,
            catalog: Some(catalog),
        },
    )
}

impl Programs {
    pub fn new(
        store: Store,
        cache: ProgramCache,
        cards: Option<TierServiceClient<ServiceChannel>>,
    ) -> Self {
        Programs {
            store,
            cache,
            cards,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn cache(&self) -> &ProgramCache {
        &self.cache
    }

    /// The merchant's category tree, as evaluation reads it.
    pub async fn catalog(&self, merchant_id: &str) -> Result<Arc<Catalog>, Error> {
        self.cache.catalog(merchant_id).await
    }

    /// The tier codes to validate against: `given` if any, else the merchant's tiers from
    /// cards-svc, else (no cards-svc configured) `None` — tier references are not checked.
    pub async fn tier_codes(
        &self,
        merchant: &str,
        given: &[String],
    ) -> Result<Option<Vec<String>>, Error> {
        if !given.is_empty() {
            return Ok(Some(given.to_vec()));
        }
        let Some(client) = &self.cards else {
            return Ok(None);
        };
        match client
            .clone()
            .list_tiers(ListTiersRequest {
                merchant_id: merchant.to_owned(),
            })
            .await
        {
            Ok(answer) => Ok(Some(
                answer
                    .into_inner()
                    .tiers
                    .into_iter()
                    .map(|t| t.code)
                    .collect(),
            )),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cards-svc ListTiers failed");
                Err(Error::Unavailable("cards"))
            }
        }
    }

    // ---- evaluation ----------------------------------------------------------------------

    /// The program an evaluation uses, per `ProgramRef` (evaluation.proto): unset = the version
    /// active at `at`; a version number = that stored version (a draft only if `allow_drafts`,
    /// else PROGRAM_NOT_PUBLISHED); `active_at` = the version active at that instant; `inline`
    /// = the document itself (only if `allow_drafts`). Drafts and inline documents are
    /// validated against `tier_codes` (empty = ask cards-svc) and the merchant's catalog; one
    /// with errors is PROGRAM_INVALID. Published plans come from the cache.
    pub async fn resolve(
        &self,
        merchant_id: &str,
        program: Option<&ProgramRef>,
        at: DateTime<Utc>,
        allow_drafts: bool,
        tier_codes: &[String],
    ) -> Result<Resolved, Error> {
        use pb::program_ref::Source;
        check_merchant(merchant_id)?;
        match program.and_then(|p| p.source.as_ref()) {
            None => self.resolve_active(merchant_id, at).await,
            Some(Source::ActiveAt(t)) => {
                let t = instant(t).ok_or_else(|| {
                    Error::invalid("program.active_at", "is not a valid timestamp")
                })?;
                self.resolve_active(merchant_id, t).await
            }
            Some(Source::Version(version)) => {
                let mut v = Violations::new();
                check_version("program.version", *version, &mut v);
                v.check()?;
                self.resolve_version(merchant_id, *version, allow_drafts, tier_codes)
                    .await
            }
            Some(Source::Inline(document)) => {
                if !allow_drafts {
                    return Err(Error::invalid(
                        "program.inline",
                        "an inline program is accepted by DryRun, CompareVersions and Simulate only",
                    ));
                }
                let mut v = Violations::new();
                check_document("program.inline", document, &mut v);
                v.check()?;
                let plan = self
                    .compile_unpublished(merchant_id, document, 0, tier_codes)
                    .await?;
                Ok(Resolved {
                    plan: plan.0,
                    state: VersionState::Unspecified,
                    violations: plan.1,
                })
            }
        }
    }

    async fn resolve_active(&self, merchant: &str, at: DateTime<Utc>) -> Result<Resolved, Error> {
        let schedule = self.cache.schedule(merchant).await?;
        let activation = schedule.at(at).ok_or_else(|| no_active_program(at))?;
        let version = u64::try_from(activation.version).unwrap_or_default();
        self.published_plan(merchant, version).await
    }

    async fn resolve_version(
        &self,
        merchant: &str,
        version: u64,
        allow_drafts: bool,
        tier_codes: &[String],
    ) -> Result<Resolved, Error> {
        if let Some(plan) = self.cache.cached_plan(merchant, version).await {
            return Ok(published(plan));
        }
        let mut tx = self.store.read().await?;
        let row = tx.version(merchant, db_version(version)).await?;
        drop(tx);
        let row = row.ok_or_else(|| version_not_found(version))?;
        if row.is_published() {
            let plan = self.cache.plan(merchant, version, &row.document).await?;
            return Ok(published(plan));
        }
        if !allow_drafts {
            return Err(not_published(row.version));
        }
        let program = Program::decode(row.document.as_slice())?;
        let (plan, violations) = self
            .compile_unpublished(merchant, &program, version, tier_codes)
            .await?;
        Ok(Resolved {
            plan,
            state: VersionState::Draft,
            violations,
        })
    }

    /// A published version's plan, compiled once per replica.
    async fn published_plan(&self, merchant: &str, version: u64) -> Result<Resolved, Error> {
        if let Some(plan) = self.cache.cached_plan(merchant, version).await {
            return Ok(published(plan));
        }
        let mut tx = self.store.read().await?;
        let row = tx.version(merchant, db_version(version)).await?;
        drop(tx);
        let row = row
            .filter(VersionRow::is_published)
            .ok_or_else(|| version_not_found(version))?;
        Ok(published(
            self.cache.plan(merchant, version, &row.document).await?,
        ))
    }

    /// Validates and compiles a draft or inline document (never cached: it may change).
    async fn compile_unpublished(
        &self,
        merchant: &str,
        program: &Program,
        version: u64,
        tier_codes: &[String],
    ) -> Result<(Arc<Plan>, Vec<Violation>), Error> {
        let tiers = self.tier_codes(merchant, tier_codes).await?;
        let catalog = self.cache.catalog(merchant).await?;
        let report = check_program(program, tiers.as_deref(), &catalog);
        if !report.is_valid() {
            return Err(Error::ProgramInvalid(report.violations));
        }
        let plan = Plan::compile(program, version)?;
        Ok((Arc::new(plan), report.warnings()))
    }

    // ---- mutations -----------------------------------------------------------------------

    pub async fn create_draft(
        &self,
        r: &pb::CreateDraftRequest,
    ) -> Result<pb::CreateDraftResponse, Error> {
        self.mutate(&r.merchant_id, &r.request_id, r, Command::CreateDraft(r))
            .await
    }

    pub async fn update_draft(
        &self,
        r: &pb::UpdateDraftRequest,
    ) -> Result<pb::UpdateDraftResponse, Error> {
        self.mutate(&r.merchant_id, &r.request_id, r, Command::UpdateDraft(r))
            .await
    }

    pub async fn delete_draft(
        &self,
        r: &pb::DeleteDraftRequest,
    ) -> Result<pb::DeleteDraftResponse, Error> {
        self.mutate(&r.merchant_id, &r.request_id, r, Command::DeleteDraft(r))
            .await
    }

    pub async fn publish_version(
        &self,
        r: &pb::PublishVersionRequest,
    ) -> Result<pb::PublishVersionResponse, Error> {
        self.mutate(&r.merchant_id, &r.request_id, r, Command::Publish(r, None))
            .await
    }

    pub async fn activate_version(
        &self,
        r: &pb::ActivateVersionRequest,
    ) -> Result<pb::ActivateVersionResponse, Error> {
        self.mutate(&r.merchant_id, &r.request_id, r, Command::Activate(r))
            .await
    }

    pub async fn cancel_activation(
        &self,
        r: &pb::CancelActivationRequest,
    ) -> Result<pb::CancelActivationResponse, Error> {
        self.mutate(&r.merchant_id, &r.request_id, r, Command::Cancel(r))
            .await
    }

    pub async fn upsert_categories(
        &self,
        r: &pb::UpsertCategoriesRequest,
    ) -> Result<pb::UpsertCategoriesResponse, Error> {
        self.mutate(
            &r.merchant_id,
            &r.request_id,
            r,
            Command::UpsertCategories(r),
        )
        .await
    }

    pub async fn delete_categories(
        &self,
        r: &pb::DeleteCategoriesRequest,
    ) -> Result<pb::DeleteCategoriesResponse, Error> {
        self.mutate(
            &r.merchant_id,
            &r.request_id,
            r,
            Command::DeleteCategories(r),
        )
        .await
    }

    /// Runs a mutation idempotently: a repeat of `request_id` with the same payload returns the
    /// stored answer; with another payload it is IDEMPOTENCY_KEY_REUSED.
    async fn mutate<R: Message + Default>(
        &self,
        merchant: &str,
        request_id: &str,
        request: &impl Message,
        command: Command<'_>,
    ) -> Result<R, Error> {
        let mut v = Violations::new();
        check_id("merchant_id", merchant, &mut v);
        check_id("request_id", request_id, &mut v);
        command.check(&mut v);
        v.check()?;
        let operation = command.name();
        let hash = digest(request);
        // A retry is answered from its record before any work, cards-svc calls included.
        if let Some(answer) = self
            .answered(merchant, request_id, operation, &hash)
            .await?
        {
            return Ok(R::decode(answer.as_slice())?);
        }
        let command = match command {
            Command::Publish(r, _) => {
                Command::Publish(r, self.tier_codes(merchant, &r.tier_codes).await?)
            }
            other => other,
        };
        let mut attempt = 0;
        let answer = loop {
            match self
                .run_once(merchant, request_id, operation, &hash, &command)
                .await
            {
                Err(e) if is_retryable(&e) && attempt < RETRIES => attempt += 1,
                other => break other?,
            }
        };
        if command.changes_cached() {
            self.cache.invalidate(merchant).await;
        }
        Ok(R::decode(answer.as_slice())?)
    }

    /// The stored answer of `request_id`, if it was answered (refused if for another request).
    async fn answered(
        &self,
        merchant: &str,
        request_id: &str,
        operation: &str,
        hash: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        let mut tx = self.store.read().await?;
        match tx.claimed_request(merchant, request_id).await? {
            Some((op, request_hash, _)) if op != operation || request_hash != hash => {
                Err(key_reused(request_id))
            }
            Some((_, _, answer)) => Ok(answer),
            None => Ok(None),
        }
    }

    async fn run_once(
        &self,
        merchant: &str,
        request_id: &str,
        operation: &str,
        hash: &[u8],
        command: &Command<'_>,
    ) -> Result<Vec<u8>, Error> {
        let now = Timestamp::now().0;
        let mut tx = self.store.write().await?;
        let answer = match tx
            .claim_request(merchant, request_id, operation, hash, now)
            .await?
        {
            Claim::Done {
                operation: op,
                request_hash,
                response,
            } => {
                if op == operation && request_hash == hash {
                    return Ok(response);
                }
                return Err(key_reused(request_id));
            }
            Claim::New => apply(&mut tx, merchant, command, now).await?,
        };
        tx.finish_request(merchant, request_id, &answer).await?;
        tx.commit().await?;
        Ok(answer)
    }

    // ---- reads ---------------------------------------------------------------------------

    /// The version active now, per this replica's cache.
    async fn active_now(&self, merchant: &str) -> Result<Option<i64>, Error> {
        Ok(self
            .cache
            .schedule(merchant)
            .await?
            .at(Utc::now())
            .map(|a| a.version))
    }

    pub async fn get_version(
        &self,
        r: &pb::GetVersionRequest,
    ) -> Result<pb::GetVersionResponse, Error> {
        let mut v = Violations::new();
        check_id("merchant_id", &r.merchant_id, &mut v);
        check_version("version", r.version, &mut v);
        v.check()?;
        let mut tx = self.store.read().await?;
        let row = tx.version(&r.merchant_id, db_version(r.version)).await?;
        drop(tx);
        let row = row.ok_or_else(|| version_not_found(r.version))?;
        let active = self.active_now(&r.merchant_id).await?;
        Ok(pb::GetVersionResponse {
            version: Some(version_proto(&row, true, active)?),
        })
    }

    pub async fn list_versions(
        &self,
        r: &pb::ListVersionsRequest,
    ) -> Result<pb::ListVersionsResponse, Error> {
        check_merchant(&r.merchant_id)?;
        let status = match VersionState::try_from(r.state) {
            Ok(VersionState::Unspecified) => None,
            Ok(VersionState::Draft) => Some(DRAFT),
            Ok(VersionState::Published) => Some(PUBLISHED),
            Err(_) => return Err(Error::invalid("state", "is not a VersionState")),
        };
        let limit = page_size(r.page_size, 20, 100)?;
        let before = if r.page_token.is_empty() {
            None
        } else {
            Some(parse_token(&r.page_token, "v")?)
        };
        let mut tx = self.store.read().await?;
        let mut rows = tx
            .list_versions(&r.merchant_id, status, before, limit + 1)
            .await?;
        drop(tx);
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => format!("v{}", last.version),
            _ => String::new(),
        };
        let active = self.active_now(&r.merchant_id).await?;
        Ok(pb::ListVersionsResponse {
            versions: rows
                .iter()
                .map(|row| version_proto(row, r.include_program, active))
                .collect::<Result<_, _>>()?,
            next_page_token,
        })
    }

    pub async fn get_active_version(
        &self,
        r: &pb::GetActiveVersionRequest,
    ) -> Result<pb::GetActiveVersionResponse, Error> {
        check_merchant(&r.merchant_id)?;
        let now = Utc::now();
        let at = match &r.at {
            Some(t) => {
                instant(t).ok_or_else(|| Error::invalid("at", "is not a valid timestamp"))?
            }
            None => now,
        };
        let schedule: Arc<Schedule> = self.cache.schedule(&r.merchant_id).await?;
        let activation = schedule.at(at).ok_or_else(|| no_active_program(at))?;
        let mut tx = self.store.read().await?;
        let row = tx.version(&r.merchant_id, activation.version).await?;
        drop(tx);
        let row = row.ok_or_else(|| {
            version_not_found(u64::try_from(activation.version).unwrap_or_default())
        })?;
        Ok(pb::GetActiveVersionResponse {
            version: Some(version_proto(
                &row,
                r.include_program,
                schedule.at(now).map(|a| a.version),
            )?),
            activation: Some(activation_proto(activation)),
            scheduled: schedule.after(at).iter().map(activation_proto).collect(),
        })
    }

    pub async fn validate_program(
        &self,
        r: &pb::ValidateProgramRequest,
    ) -> Result<pb::ValidateProgramResponse, Error> {
        use pb::validate_program_request::Source;
        let mut v = Violations::new();
        check_id("merchant_id", &r.merchant_id, &mut v);
        check_tier_codes(&r.tier_codes, &mut v);
        match &r.source {
            None => v.add("source", "set program or version"),
            Some(Source::Program(p)) => check_document("program", p, &mut v),
            Some(Source::Version(n)) => check_version("version", *n, &mut v),
        }
        v.check()?;
        let (program, stored) = match &r.source {
            Some(Source::Program(p)) => (p.clone(), None),
            Some(Source::Version(n)) => {
                let mut tx = self.store.read().await?;
                let row = tx.version(&r.merchant_id, db_version(*n)).await?;
                drop(tx);
                let row = row.ok_or_else(|| version_not_found(*n))?;
                (Program::decode(row.document.as_slice())?, Some(row))
            }
            None => return Err(Error::invalid("source", "set program or version")),
        };
        let tiers = self.tier_codes(&r.merchant_id, &r.tier_codes).await?;
        let catalog = self.cache.catalog(&r.merchant_id).await?;
        let report = check_program(&program, tiers.as_deref(), &catalog);
        // A draft remembers what it needs until its next change (the etag guards the race).
        if let Some(row) = stored.filter(|row| !row.is_published()) {
            let mut tx = self.store.write().await?;
            tx.set_needs(
                &r.merchant_id,
                row.version,
                &row.etag,
                &report.needs.encode_to_vec(),
            )
            .await?;
            tx.commit().await?;
        }
        Ok(pb::ValidateProgramResponse {
            valid: report.is_valid(),
            violations: report.violations,
            needs: Some(report.needs),
        })
    }

    pub async fn list_categories(
        &self,
        r: &pb::ListCategoriesRequest,
    ) -> Result<pb::ListCategoriesResponse, Error> {
        let mut v = Violations::new();
        check_id("merchant_id", &r.merchant_id, &mut v);
        if !r.parent_id.is_empty() {
            catalog_store::check_category_id("parent_id", &r.parent_id, &mut v);
        }
        v.check()?;
        let limit = page_size(r.page_size, 500, 1000)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(
                hex::decode(r.page_token.strip_prefix('c').unwrap_or("-"))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(page_token_invalid)?,
            )
        };
        let parent = (!r.parent_id.is_empty()).then_some(r.parent_id.as_str());
        let mut tx = self.store.read().await?;
        let mut rows = tx
            .list_categories(&r.merchant_id, parent, after.as_deref(), limit + 1)
            .await?;
        drop(tx);
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => format!("c{}", hex::encode(&last.category_id)),
            _ => String::new(),
        };
        Ok(pb::ListCategoriesResponse {
            categories: rows.iter().map(CategoryRow::proto).collect(),
            next_page_token,
        })
    }

    /// Forgets request ids older than `retention` and change-feed rows older than a day.
    pub async fn prune(&self, retention: chrono::Duration) -> Result<(), Error> {
        let now = Utc::now();
        let mut tx = self.store.write().await?;
        tx.prune_idempotency(now - retention).await?;
        tx.prune_changes(now - chrono::Duration::days(1)).await?;
        tx.commit().await
    }
}

fn published(plan: Arc<Plan>) -> Resolved {
    Resolved {
        plan,
        state: VersionState::Published,
        violations: Vec::new(),
    }
}

/// A keyset token `<prefix><number>` this service issued.
fn parse_token(token: &str, prefix: &str) -> Result<i64, Error> {
    token
        .strip_prefix(prefix)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(page_token_invalid)
}

/// One mutation inside its transaction; the answer is encoded for the idempotency record.
async fn apply(
    tx: &mut Tx,
    merchant: &str,
    command: &Command<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, Error> {
    Ok(match command {
        Command::CreateDraft(r) => create_draft(tx, merchant, r, now).await?.encode_to_vec(),
        Command::UpdateDraft(r) => update_draft(tx, merchant, r, now).await?.encode_to_vec(),
        Command::DeleteDraft(r) => delete_draft(tx, merchant, r).await?.encode_to_vec(),
        Command::Publish(r, tiers) => publish(tx, merchant, r, tiers.as_deref(), now)
            .await?
            .encode_to_vec(),
        Command::Activate(r) => activate(tx, merchant, r, now).await?.encode_to_vec(),
        Command::Cancel(r) => cancel(tx, merchant, r, now).await?.encode_to_vec(),
        Command::UpsertCategories(r) => upsert_categories(tx, merchant, r, now)
            .await?
            .encode_to_vec(),
        Command::DeleteCategories(r) => delete_categories(tx, merchant, r, now)
            .await?
            .encode_to_vec(),
    })
}

async fn create_draft(
    tx: &mut Tx,
    merchant: &str,
    r: &pb::CreateDraftRequest,
    now: DateTime<Utc>,
) -> Result<pb::CreateDraftResponse, Error> {
    use pb::create_draft_request::Source;
    let (program, based_on) = match &r.source {
        Some(Source::Program(p)) => (p.clone(), 0),
        Some(Source::CopyOfVersion(n)) => {
            let row = tx
                .version(merchant, db_version(*n))
                .await?
                .ok_or_else(|| version_not_found(*n))?;
            (Program::decode(row.document.as_slice())?, row.version)
        }
        None => return Err(Error::invalid("source", "set program or copy_of_version")),
    };
    let version = tx.next_version(merchant).await?;
    let now = Timestamp::from(now);
    let row = VersionRow {
        merchant_id: merchant.to_owned(),
        version,
        status: DRAFT.to_owned(),
        document: program.encode_to_vec(),
        etag: new_id(),
        fingerprint: fingerprint(&program),
        based_on_version: based_on,
        comment: r.comment.clone(),
        created_by: r.created_by.clone(),
        needs: None,
        created_at: now,
        updated_at: now,
        published_at: None,
    };
    tx.insert_version(&row).await?;
    Ok(pb::CreateDraftResponse {
        version: Some(version_proto(&row, true, None)?),
    })
}

/// The draft `version`, locked, checked against `etag` (if given); published is immutable.
async fn locked_draft(
    tx: &mut Tx,
    merchant: &str,
    version: u64,
    etag: &str,
) -> Result<VersionRow, Error> {
    let row = tx
        .lock_version(merchant, db_version(version))
        .await?
        .ok_or_else(|| version_not_found(version))?;
    if row.is_published() {
        return Err(immutable(row.version));
    }
    if !etag.is_empty() && etag != row.etag {
        return Err(concurrent_modification(row.version));
    }
    Ok(row)
}

async fn update_draft(
    tx: &mut Tx,
    merchant: &str,
    r: &pb::UpdateDraftRequest,
    now: DateTime<Utc>,
) -> Result<pb::UpdateDraftResponse, Error> {
    let mut row = locked_draft(tx, merchant, r.version, &r.etag).await?;
    let program = r.program.clone().unwrap_or_default();
    row.document = program.encode_to_vec();
    row.fingerprint = fingerprint(&program);
    row.etag = new_id();
    if !r.comment.is_empty() {
        row.comment = r.comment.clone();
    }
    // What the old document needed says nothing about the new one.
    row.needs = None;
    row.updated_at = Timestamp::from(now);
    tx.update_draft(&row).await?;
    Ok(pb::UpdateDraftResponse {
        version: Some(version_proto(&row, true, None)?),
    })
}

async fn delete_draft(
    tx: &mut Tx,
    merchant: &str,
    r: &pb::DeleteDraftRequest,
) -> Result<pb::DeleteDraftResponse, Error> {
    let row = locked_draft(tx, merchant, r.version, "").await?;
    tx.delete_draft(merchant, row.version).await?;
    Ok(pb::DeleteDraftResponse { version: r.version })
}

async fn publish(
    tx: &mut Tx,
    merchant: &str,
    r: &pb::PublishVersionRequest,
    tiers: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<pb::PublishVersionResponse, Error> {
    let mut row = tx
        .lock_version(merchant, db_version(r.version))
        .await?
        .ok_or_else(|| version_not_found(r.version))?;
    if !r.etag.is_empty() && r.etag != row.etag {
        return Err(concurrent_modification(row.version));
    }
    let program = Program::decode(row.document.as_slice())?;
    let catalog = Catalog::new(tx.category_parents(merchant).await?);
    let report = check_program(&program, tiers, &catalog);
    if row.is_published() {
        // Publishing what is already published (same etag) changes nothing.
        let active = Schedule {
            activations: tx.activations(merchant).await?,
        }
        .at(now)
        .map(|a| a.version);
        return Ok(pb::PublishVersionResponse {
            version: Some(version_proto(&row, true, active)?),
            warnings: report.warnings(),
        });
    }
    if !report.is_valid() {
        return Err(Error::ProgramInvalid(report.violations));
    }
    // A published version must compile: evaluation relies on it.
    Plan::compile(&program, u64::try_from(row.version).unwrap_or_default())?;
    let needs = report.needs.encode_to_vec();
    tx.publish(merchant, row.version, &needs, now).await?;
    tx.record_change(merchant, "publish", now).await?;
    row.status = PUBLISHED.to_owned();
    row.needs = Some(needs);
    row.published_at = Some(Timestamp::from(now));
    Ok(pb::PublishVersionResponse {
        version: Some(version_proto(&row, true, None)?),
        warnings: report.warnings(),
    })
}

async fn activate(
    tx: &mut Tx,
    merchant: &str,
    r: &pb::ActivateVersionRequest,
    now: DateTime<Utc>,
) -> Result<pb::ActivateVersionResponse, Error> {
    let row = tx
        .version(merchant, db_version(r.version))
        .await?
        .ok_or_else(|| version_not_found(r.version))?;
    if !row.is_published() {
        return Err(not_published(row.version));
    }
    // Unset or in the past means now.
    let at = r
        .activate_at
        .as_ref()
        .and_then(instant)
        .filter(|t| *t > now)
        .unwrap_or(now);
    let activation = ActivationRow {
        activation_id: new_id(),
        version: row.version,
        activate_at: Timestamp::from(at),
        created_at: Timestamp::from(now),
        requested_by: r.requested_by.clone(),
    };
    tx.upsert_activation(merchant, &activation).await?;
    tx.record_change(merchant, "activate", now).await?;
    Ok(pb::ActivateVersionResponse {
        activation: Some(activation_proto(&activation)),
        active_now: at <= now,
    })
}

async fn cancel(
    tx: &mut Tx,
    merchant: &str,
    r: &pb::CancelActivationRequest,
    now: DateTime<Utc>,
) -> Result<pb::CancelActivationResponse, Error> {
    let not_found = |why: &str| -> Error {
        Refusal::not_found(
            "ACTIVATION_NOT_FOUND",
            format!("activation `{}` {why}", r.activation_id),
        )
        .into()
    };
    let activation = tx
        .activation(merchant, &r.activation_id)
        .await?
        .ok_or_else(|| not_found("not found"))?;
    if activation.activate_at.0 <= now {
        return Err(not_found(
            "already took effect; only scheduled activations can be cancelled",
        ));
    }
    tx.delete_activation(merchant, &r.activation_id).await?;
    tx.record_change(merchant, "cancel", now).await?;
    Ok(pb::CancelActivationResponse {
        activation: Some(activation_proto(&activation)),
    })
}

async fn upsert_categories(
    tx: &mut Tx,
    merchant: &str,
    r: &pb::UpsertCategoriesRequest,
    now: DateTime<Utc>,
) -> Result<pb::UpsertCategoriesResponse, Error> {
    let existing = tx.category_parents(merchant).await?;
    let mut v = Violations::new();
    let before = catalog_store::check_tree(&existing, &r.categories, &mut v);
    v.check()?;
    for c in &r.categories {
        let row = CategoryRow {
            category_id: c.category_id.clone(),
            name: c.name.clone(),
            parent_id: c.parent_id.clone(),
        };
        tx.upsert_category(merchant, &row, now).await?;
    }
    tx.record_change(merchant, "catalog", now).await?;
    let updated = before.len();
    Ok(pb::UpsertCategoriesResponse {
        created: u32::try_from(r.categories.len() - updated).unwrap_or(u32::MAX),
        updated: u32::try_from(updated).unwrap_or(u32::MAX),
    })
}

async fn delete_categories(
    tx: &mut Tx,
    merchant: &str,
    r: &pb::DeleteCategoriesRequest,
    now: DateTime<Utc>,
) -> Result<pb::DeleteCategoriesResponse, Error> {
    let mut deleted = 0u32;
    for id in &r.category_ids {
        // Read one at a time: deleting a parent first moves its children, so each category's
        // parent is read after the deletions before it.
        if let Some(row) = tx.category(merchant, id).await? {
            tx.delete_category(merchant, &row).await?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        tx.record_change(merchant, "catalog", now).await?;
    }
    Ok(pb::DeleteCategoriesResponse { deleted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_checked() {
        assert_eq!(parse_token("v12", "v").unwrap(), 12);
        for bad in [
            "",
            "v",
            "12",
            "v-1",
            "v0",
            "v1x",
            "vvv",
            "v99999999999999999999",
        ] {
            assert!(parse_token(bad, "v").is_err(), "{bad}");
        }
    }

    #[test]
    fn request_timestamps_are_read_to_the_microsecond() {
        let t = instant(&PbTimestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        })
        .unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 123_456_000);
        assert!(instant(&PbTimestamp {
            seconds: 0,
            nanos: -1
        })
        .is_none());
        assert!(instant(&PbTimestamp {
            seconds: i64::MAX,
            nanos: 0
        })
        .is_none());
    }

    #[test]
    fn field_checks_name_the_field() {
        let r = pb::CreateDraftRequest {
            merchant_id: "m".into(),
            request_id: "r".into(),
            source: Some(pb::create_draft_request::Source::CopyOfVersion(0)),
            comment: "x".repeat(MAX_COMMENT + 1),
            created_by: "y".repeat(MAX_AUTHOR + 1),
        };
        let mut v = Violations::new();
        Command::CreateDraft(&r).check(&mut v);
        let fields: Vec<&str> = v.fields().iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["copy_of_version", "comment", "created_by"]);
    }
}
