//! Customers (C4, C5): registration, profile, consents, listing for segments, merging.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use kopilka_proto::cards as pb;
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::types::{self, event::Payload};
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::Violations;
use kopilka_runtime::Timestamp;
use prost::Message;
use tonic::Code;

use crate::cards::{
    check_customer_ref, check_len, digest, event, instant, key_reused, new_id, not_future,
    timestamp, Cards, MerchantSettings, MAX_ID, STATE_ACTIVE, STATE_MERGED,
};
use crate::error::Error;
use crate::identifiers::{self, Candidate, ReadError};
use crate::identify::storage_form;
use crate::on_conn;
use crate::store::{CardsTx, CustomerQuery, CustomerRow};

/// How many identifiers a registration may attach.
const MAX_NEW_IDENTIFIERS: usize = 10;
/// Longest external id (the merchant's CRM id).
const MAX_EXTERNAL_ID: usize = 64;
/// Attributes of a profile, and the longest key and value.
const MAX_ATTRIBUTES: usize = 32;
const MAX_ATTRIBUTE_KEY: usize = 64;
const MAX_ATTRIBUTE_VALUE: usize = 256;
/// Longest e-mail address (RFC 5321), in bytes.
const MAX_EMAIL_BYTES: usize = 254;
/// ListCustomers: the default and the largest page, and the most customer ids in a filter.
const CUSTOMERS_PAGE: u32 = 100;
const MAX_CUSTOMERS_PAGE: u32 = 1000;
const MAX_FILTER_IDS: usize = 1000;

/// Bit of a consent channel in `customers.consent_mask`.
fn consent_bit(channel: i32) -> i32 {
    1 << channel.clamp(0, 30)
}

fn consent_mask(consents: &[types::Consent]) -> i32 {
    consents
        .iter()
        .filter(|c| c.granted)
        .fold(0, |m, c| m | consent_bit(c.channel))
}

fn validate_consent(field: &str, c: &types::Consent, v: &mut Violations) {
    if c.channel == 0 || types::Channel::try_from(c.channel).is_err() {
        v.add(format!("{field}.channel"), "is required");
    }
    check_len(&format!("{field}.source"), &c.source, 200, v);
}

/// Puts `c` into `consents`, one per channel (the later one wins).
fn merge_consent(consents: &mut Vec<types::Consent>, c: types::Consent) {
    match consents.iter_mut().find(|x| x.channel == c.channel) {
        Some(x) => {
            let newer = match (&x.updated_at, &c.updated_at) {
                (Some(a), Some(b)) => (b.seconds, b.nanos) >= (a.seconds, a.nanos),
                _ => true,
            };
            if newer {
                *x = c;
            }
        }
        None => consents.push(c),
    }
    consents.sort_by_key(|c| c.channel);
}

/// Checks and normalises a profile; returns it with the phone in E.164.
pub(crate) fn normalise_profile(
    field: &str,
    p: &pb::CustomerProfile,
    s: &MerchantSettings,
    v: &mut Violations,
) -> Result<pb::CustomerProfile, Error> {
    let mut p = p.clone();
    for (name, value) in [
        ("first_name", &p.first_name),
        ("last_name", &p.last_name),
        ("middle_name", &p.middle_name),
    ] {
        check_len(&format!("{field}.{name}"), value, 100, v);
    }
    check_len(&format!("{field}.locale"), &p.locale, 35, v);
    if !p.email.is_empty() {
        let email = p.email.trim().to_owned();
        match email.rsplit_once('@') {
            _ if email.len() > MAX_EMAIL_BYTES => {
                v.limit(&format!("{field}.email"), MAX_EMAIL_BYTES, "bytes")
            }
            Some((local, domain)) if !local.is_empty() && domain.contains('.') => {
                p.email = format!("{local}@{}", domain.to_lowercase());
            }
            _ => v.add(format!("{field}.email"), "must be an e-mail address"),
        }
    }
    if let Some(d) = &p.birth_date {
        let year = if d.year == 0 { 2000 } else { d.year };
        let valid = (d.year == 0 || (1900..=2100).contains(&d.year))
            && u32::try_from(d.month)
                .ok()
                .zip(u32::try_from(d.day).ok())
                .and_then(|(m, day)| NaiveDate::from_ymd_opt(year, m, day))
                .is_some();
        if !valid {
            v.add(
                format!("{field}.birth_date"),
                "is not a calendar date (year 0 = unknown)",
            );
        }
    }
    if p.gender != 0 && types::Gender::try_from(p.gender).is_err() {
        v.add(format!("{field}.gender"), "is not a known gender");
    }
    v.count(
        &format!("{field}.attributes"),
        p.attributes.len(),
        MAX_ATTRIBUTES,
    );
    for (k, value) in &p.attributes {
        let path = format!("{field}.attributes[{k}]");
        if k.is_empty() {
            v.add(path, "keys are 1 to 64 characters");
        } else if k.chars().count() > MAX_ATTRIBUTE_KEY {
            v.limit(&path, MAX_ATTRIBUTE_KEY, "characters in a key");
        } else if value.chars().count() > MAX_ATTRIBUTE_VALUE {
            v.limit(&path, MAX_ATTRIBUTE_VALUE, "characters in a value");
        }
    }
    if !p.phone.is_empty() {
        p.phone = identifiers::normalise_phone(&p.phone, &s.formats).map_err(|e| {
            let e = ReadError::new(types::IdentifierKind::Phone, e);
            Error::unreadable(format!("{field}.phone"), e)
        })?;
    }
    Ok(p)
}

fn birthday(p: &pb::CustomerProfile) -> (i32, i32) {
    p.birth_date.as_ref().map_or((0, 0), |d| (d.month, d.day))
}

/// What a registration creates, from CreateCustomer or SelfRegister.
pub(crate) struct Registration<'a> {
    pub profile: &'a pb::CustomerProfile,
    pub identifiers: &'a [types::IdentifierInput],
    pub referrer: Option<&'a types::IdentifierInput>,
    /// A referrer named by id (a personal invite link).
    pub referrer_id: Option<&'a str>,
    pub consents: &'a [types::Consent],
    pub registration: pb::RegistrationSource,
    pub registered_at: Option<&'a kopilka_proto::wkt::Timestamp>,
    pub external_id: &'a str,
    pub correlation: &'a str,
}

impl Cards {
    /// The customer, or CUSTOMER_NOT_FOUND; CUSTOMER_MERGED for a merged record. Locks the row.
    pub(crate) async fn active_customer(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        id: &str,
    ) -> Result<CustomerRow, Error> {
        let c = tx
            .lock_customer(merchant, id)
            .await?
            .ok_or_else(|| Error::customer_not_found(id))?;
        if c.state == STATE_MERGED {
            return Err(Refusal::precondition(
                "CUSTOMER_MERGED",
                format!("customer `{id}` was merged into `{}`", c.merged_into),
            )
            .with("surviving_customer_id", &c.merged_into)
            .into());
        }
        Ok(c)
    }

    /// The API's customer for a row read in `tx`.
    pub(crate) async fn customer_proto(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        c: &CustomerRow,
    ) -> Result<pb::Customer, Error> {
        let ids = tx.identifiers_of(merchant, &c.customer_id).await?;
        let tier = match c.tier_seq {
            0 => None,
            seq => tx
                .tier_assignment(merchant, &c.customer_id, seq)
                .await?
                .map(|b| pb::TierAssignment::decode(b.as_slice()))
                .transpose()?,
        };
        c.proto(&ids, tier)
    }

    pub(crate) async fn create_customer(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::CreateCustomerRequest,
        s: &MerchantSettings,
        now: DateTime<Utc>,
    ) -> Result<pb::CreateCustomerResponse, Error> {
        let mut registration = r.registration.clone().unwrap_or_default();
        if registration.channel == 0 {
            registration.channel = pb::RegistrationChannel::Api as i32;
        }
        let (customer, chain) = self
            .register(
                tx,
                merchant,
                Registration {
                    profile: &r.profile.clone().unwrap_or_default(),
                    identifiers: &r.identifiers,
                    referrer: r.referrer.as_ref(),
                    referrer_id: None,
                    consents: &r.consents,
                    registration,
                    registered_at: r.registered_at.as_ref(),
                    external_id: &r.external_id,
                    correlation: &r.request_id,
                },
                s,
                now,
            )
            .await?;
        Ok(pb::CreateCustomerResponse {
            customer: Some(customer),
            referrer_chain_customer_ids: chain,
        })
    }

    /// Creates a customer with identifiers, referrer, default tier and the CustomerRegistered
    /// event, all in `tx`.
    pub(crate) async fn register(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        reg: Registration<'_>,
        s: &MerchantSettings,
        now: DateTime<Utc>,
    ) -> Result<(pb::Customer, Vec<String>), Error> {
        let mut v = Violations::new();
        let profile = normalise_profile("profile", reg.profile, s, &mut v)?;
        v.count("identifiers", reg.identifiers.len(), MAX_NEW_IDENTIFIERS);
        for (i, c) in reg.consents.iter().enumerate() {
            validate_consent(&format!("consents[{i}]"), c, &mut v);
        }
        check_len(
            "registration.campaign",
            &reg.registration.campaign,
            64,
            &mut v,
        );
        check_len(
            "registration.store_id",
            &reg.registration.store_id,
            MAX_ID,
            &mut v,
        );
        check_len(
            "registration.terminal_id",
            &reg.registration.terminal_id,
            MAX_ID,
            &mut v,
        );
        v.enumeration::<pb::RegistrationChannel>("registration.channel", reg.registration.channel);
        check_len("external_id", reg.external_id, MAX_EXTERNAL_ID, &mut v);
        let registered_at = match reg.registered_at {
            Some(t) => not_future("registered_at", t, now, &mut v).unwrap_or(now),
            None => now,
        };
        let mut stored: Vec<(String, Candidate)> = Vec::new();
        if !profile.phone.is_empty() {
            stored.push((
                "profile.phone".to_owned(),
                Candidate {
                    kind: types::IdentifierKind::Phone,
                    value: profile.phone.clone(),
                },
            ));
        }
        for (i, input) in reg.identifiers.iter().enumerate() {
            let field = format!("identifiers[{i}]");
            let c = storage_form(input, &s.formats, &field)?;
            if !stored.iter().any(|(_, x)| *x == c) {
                stored.push((field, c));
            }
        }
        if stored.is_empty() {
            v.add(
                "profile.phone",
                "a customer needs a phone or at least one identifier",
            );
        }
        v.check()?;
        if !reg.external_id.is_empty() {
            if let Some(owner) = tx
                .customer_by_external_id(merchant, reg.external_id)
                .await?
            {
                return Err(external_id_taken(&owner));
            }
        }
        let customer_id = new_id();
        let referrer = match (reg.referrer_id, reg.referrer) {
            (Some(id), _) if !id.is_empty() => Some(
                self.active_customer(tx, merchant, id)
                    .await
                    .map_err(referrer_not_found)?,
            ),
            (_, Some(input)) if !input.raw.is_empty() => {
                // Naming yourself (your own phone or card) is a self-referral.
                let parsed = crate::identify::read(Some(input), &s.formats, "referrer")?;
                if parsed
                    .candidates
                    .iter()
                    .any(|c| stored.iter().any(|(_, x)| x == c))
                {
                    return Err(Refusal::precondition(
                        "SELF_REFERRAL",
                        "a customer cannot refer themselves",
                    )
                    .into());
                }
                Some(self.resolve_referrer(tx, merchant, input, s).await?)
            }
            _ => None,
        };
        let consents = {
            let mut list = Vec::new();
            for c in reg.consents {
                let mut c = c.clone();
                if c.updated_at.is_none() {
                    c.updated_at = Some(timestamp(now));
                }
                merge_consent(&mut list, c);
            }
            list
        };
        let (birth_month, birth_day) = birthday(&profile);
        let mut row = CustomerRow {
            customer_id: customer_id.clone(),
            state: STATE_ACTIVE,
            merged_into: String::new(),
            external_id: (!reg.external_id.is_empty()).then(|| reg.external_id.to_owned()),
            phone: profile.phone.clone(),
            birth_month,
            birth_day,
            gender: profile.gender,
            consent_mask: consent_mask(&consents),
            referrer_id: referrer
                .as_ref()
                .map(|c| c.customer_id.clone())
                .unwrap_or_default(),
            referred_at: referrer.as_ref().map(|_| Timestamp(now)),
            tier_code: String::new(),
            tier_seq: 0,
            registered_at: Timestamp(registered_at),
            created_at: Timestamp(now),
            updated_at: Timestamp(now),
            version: 1,
            profile: profile.encode_to_vec(),
            consents: pb::SetConsentResponse {
                consents: consents.clone(),
            }
            .encode_to_vec(),
            registration: reg.registration.encode_to_vec(),
        };
        tx.insert_customer(merchant, &row).await?;
        for (_, c) in &stored {
            Self::attach(tx, merchant, &customer_id, c, now).await?;
        }
        if let Some(tier) = self.default_tier(tx, merchant).await? {
            let assignment = pb::TierAssignment {
                tier_code: tier.code.clone(),
                tier_name: tier.name.clone(),
                tier_rank: tier.rank,
                source: pb::TierSource::Registration as i32,
                reason: "default tier at registration".to_owned(),
                ..Default::default()
            };
            self.record_assignment(
                tx,
                merchant,
                reg.correlation,
                &mut row,
                None,
                assignment,
                None,
                now,
                now,
            )
            .await?;
        }
        let source = pb::RegistrationChannel::try_from(reg.registration.channel)
            .map(|c| c.as_str_name().to_owned())
            .unwrap_or_default();
        let payload = Payload::CustomerRegistered(types::CustomerRegistered {
            source,
            store_id: reg.registration.store_id.clone(),
            referrer_customer_id: row.referrer_id.clone(),
            consents,
        });
        tx.insert_events(
            merchant,
            &[event(merchant, &customer_id, reg.correlation, payload, now)],
            now,
        )
        .await?;
        let chain = self
            .chain(
                tx,
                merchant,
                &customer_id,
                s.settings.referral_max_depth as usize,
            )
            .await?
            .into_iter()
            .map(|l| l.customer_id)
            .collect();
        let customer = self.customer_proto(tx, merchant, &row).await?;
        Ok((customer, chain))
    }

    pub(crate) async fn get_customer(
        &self,
        r: &pb::GetCustomerRequest,
    ) -> Result<pb::GetCustomerResponse, Error> {
        check_customer_ref(&r.merchant_id, &r.customer_id)?;
        on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            let c = conn
                .customer(&r.merchant_id, &r.customer_id)
                .await?
                .ok_or_else(|| Error::customer_not_found(&r.customer_id))?;
            Ok(pb::GetCustomerResponse { customer: Some(self.customer_proto(conn, &r.merchant_id, &c).await?) })
        })
    }

    pub(crate) async fn update_customer(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        request_id: &str,
        r: &pb::UpdateCustomerRequest,
        s: &MerchantSettings,
        now: DateTime<Utc>,
    ) -> Result<pb::UpdateCustomerResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        check_len("external_id", &r.external_id, MAX_EXTERNAL_ID, &mut v);
        let paths = r
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        const FIELDS: [&str; 9] = [
            "first_name",
            "last_name",
            "middle_name",
            "phone",
            "email",
            "birth_date",
            "gender",
            "locale",
            "attributes",
        ];
        if paths.is_empty() && r.external_id.is_empty() {
            v.add("update_mask", "is required");
        }
        for p in &paths {
            if p != "*" && !FIELDS.contains(&p.as_str()) {
                v.add(
                    "update_mask",
                    format!("`{p}` is not a CustomerProfile field"),
                );
            }
        }
        let given =
            normalise_profile("profile", &r.profile.clone().unwrap_or_default(), s, &mut v)?;
        v.check()?;
        let mut c = self.active_customer(tx, merchant, &r.customer_id).await?;
        if !r.etag.is_empty() && r.etag != c.version.to_string() {
            return Err(Refusal::new(
                Code::Aborted,
                "CONCURRENT_MODIFICATION",
                "the customer changed since it was read; read it again",
            )
            .into());
        }
        let mut profile = pb::CustomerProfile::decode(c.profile.as_slice())?;
        let all = paths.iter().any(|p| p == "*");
        let wanted = |f: &str| all || paths.iter().any(|p| p == f);
        let mut changed = Vec::new();
        macro_rules! take {
            ($field:ident) => {
                if wanted(stringify!($field)) && profile.$field != given.$field {
                    profile.$field = given.$field.clone();
                    changed.push(stringify!($field).to_owned());
                }
            };
        }
        let old_phone = profile.phone.clone();
        take!(first_name);
        take!(last_name);
        take!(middle_name);
        take!(phone);
        take!(email);
        take!(birth_date);
        take!(gender);
        take!(locale);
        take!(attributes);
        if profile.phone != old_phone {
            let phone = types::IdentifierKind::Phone;
            if !old_phone.is_empty() {
                tx.delete_identifier(merchant, phone as i32, &old_phone)
                    .await?;
            }
            if !profile.phone.is_empty() {
                let c = Candidate {
                    kind: phone,
                    value: profile.phone.clone(),
                };
                Self::attach(tx, merchant, &r.customer_id, &c, now).await?;
            }
        }
        if !r.external_id.is_empty() && c.external_id.as_deref() != Some(&r.external_id) {
            if let Some(owner) = tx.customer_by_external_id(merchant, &r.external_id).await? {
                return Err(external_id_taken(&owner));
            }
            c.external_id = Some(r.external_id.clone());
            changed.push("external_id".to_owned());
        }
        if !changed.is_empty() {
            (c.birth_month, c.birth_day) = birthday(&profile);
            c.gender = profile.gender;
            c.phone = profile.phone.clone();
            c.profile = profile.encode_to_vec();
            c.version += 1;
            c.updated_at = Timestamp(now);
            tx.update_customer(merchant, &c).await?;
            let payload = Payload::ProfileUpdated(types::ProfileUpdated {
                changed_fields: changed,
            });
            tx.insert_events(
                merchant,
                &[event(merchant, &c.customer_id, request_id, payload, now)],
                now,
            )
            .await?;
        }
        Ok(pb::UpdateCustomerResponse {
            customer: Some(self.customer_proto(tx, merchant, &c).await?),
        })
    }

    pub(crate) async fn set_consent(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        request_id: &str,
        r: &pb::SetConsentRequest,
        now: DateTime<Utc>,
    ) -> Result<pb::SetConsentResponse, Error> {
        let mut v = Violations::new();
        v.id("customer_id", &r.customer_id, MAX_ID, true);
        let mut consent = r
            .consent
            .clone()
            .ok_or_else(|| Error::invalid("consent", "is required"))?;
        validate_consent("consent", &consent, &mut v);
        if consent.source.trim().is_empty() {
            v.add("consent.source", "is required");
        }
        v.check()?;
        if consent.updated_at.is_none() {
            consent.updated_at = Some(timestamp(now));
        }
        let mut c = self.active_customer(tx, merchant, &r.customer_id).await?;
        let mut consents = c.consents_list()?;
        // An explicit change always wins over what is stored, whatever its timestamp.
        consents.retain(|x| x.channel != consent.channel);
        merge_consent(&mut consents, consent.clone());
        c.consent_mask = consent_mask(&consents);
        c.consents = pb::SetConsentResponse {
            consents: consents.clone(),
        }
        .encode_to_vec();
        c.version += 1;
        c.updated_at = Timestamp(now);
        tx.update_customer(merchant, &c).await?;
        let payload = Payload::ConsentChanged(types::ConsentChanged {
            consent: Some(consent),
        });
        tx.insert_events(
            merchant,
            &[event(merchant, &c.customer_id, request_id, payload, now)],
            now,
        )
        .await?;
        Ok(pb::SetConsentResponse { consents })
    }

    pub(crate) async fn list_customers(
        &self,
        r: &pb::ListCustomersRequest,
    ) -> Result<pb::ListCustomersResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        let f = r.filter.clone().unwrap_or_default();
        let limit =
            i64::from(v.page_size("page_size", r.page_size, CUSTOMERS_PAGE, MAX_CUSTOMERS_PAGE));
        v.count("filter.customer_ids", f.customer_ids.len(), MAX_FILTER_IDS);
        if f.birthday_from.is_some() != f.birthday_to.is_some() {
            v.add(
                "filter.birthday_to",
                "birthday_from and birthday_to go together",
            );
        }
        if f.birth_month > 12 {
            v.add("filter.birth_month", "must be 0 to 12");
        }
        let md = |d: &types::Date, field: &str, v: &mut Violations| {
            if !(1..=12).contains(&d.month) || !(1..=31).contains(&d.day) {
                v.add(field, "needs a month and a day");
            }
            d.month * 100 + d.day
        };
        let birthday = match (&f.birthday_from, &f.birthday_to) {
            (Some(a), Some(b)) => Some((
                md(a, "filter.birthday_from", &mut v),
                md(b, "filter.birthday_to", &mut v),
            )),
            _ => None,
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            let parsed = r.page_token.split_once('|').and_then(|(at, id)| {
                at.parse::<i64>()
                    .ok()
                    .and_then(DateTime::from_timestamp_micros)
                    .map(|at| (at, id.to_owned()))
            });
            if parsed.is_none() {
                v.page_token_invalid("page_token");
            }
            parsed
        };
        let registered = f.registered.unwrap_or_default();
        let registered_from = registered
            .start
            .as_ref()
            .and_then(|t| instant("filter.registered", t, &mut v));
        let registered_to = registered
            .end
            .as_ref()
            .and_then(|t| instant("filter.registered", t, &mut v));
        let updated_since = f
            .updated_since
            .as_ref()
            .and_then(|t| instant("filter.updated_since", t, &mut v));
        v.check()?;
        let q = CustomerQuery {
            customer_ids: f.customer_ids.clone(),
            tier_codes: f.tier_codes.clone(),
            registered_from,
            registered_to,
            birthday,
            birth_month: f.birth_month as i32,
            consent_bit: if f.consent_channel == 0 {
                0
            } else {
                consent_bit(f.consent_channel)
            },
            updated_since,
            genders: f.genders.clone(),
            include_merged: f.include_merged,
            after,
            limit,
        };
        on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            let mut rows = conn.list_customers(&r.merchant_id, &q).await?;
            // Non-leap years: a 28 February window also catches 29 February birthdays.
            if let Some((from, to)) = q.birthday {
                let leap = NaiveDate::from_ymd_opt(Utc::now().year(), 2, 29).is_some();
                if !leap && (from..=to).contains(&228) && !(from..=to).contains(&229) {
                    let mut extra = conn.list_customers(&r.merchant_id, &CustomerQuery { birthday: Some((229, 229)), ..q.clone() }).await?;
                    rows.append(&mut extra);
                    rows.sort_by(|a, b| (a.created_at.0, &a.customer_id).cmp(&(b.created_at.0, &b.customer_id)));
                    rows.truncate(limit as usize);
                }
            }
            let next_page_token = match rows.last() {
                Some(last) if rows.len() as i64 == limit => format!("{}|{}", last.created_at.0.timestamp_micros(), last.customer_id),
                _ => String::new(),
            };
            let mut customers = Vec::with_capacity(rows.len());
            for c in &rows {
                customers.push(self.customer_proto(conn, &r.merchant_id, c).await?);
            }
            Ok(pb::ListCustomersResponse { customers, next_page_token })
        })
    }

    /// Merges the ledger accounts first (idempotent there), then the records here in one
    /// transaction: a ledger outage leaves nothing half done, and a retry completes the merge.
    pub(crate) async fn merge(
        &self,
        r: &pb::MergeCustomersRequest,
    ) -> Result<pb::MergeCustomersResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.id("request_id", &r.request_id, MAX_ID, true);
        v.id(
            "surviving_customer_id",
            &r.surviving_customer_id,
            MAX_ID,
            true,
        );
        v.id("merged_customer_id", &r.merged_customer_id, MAX_ID, true);
        v.check()?;
        if r.surviving_customer_id == r.merged_customer_id {
            return Err(merge_conflict(
                "same_customer",
                "a customer cannot be merged into itself",
            ));
        }
        let command = crate::cards::Command::MergeCustomers(r);
        let (survivor, merged, prior) = on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            let s = conn.customer(&r.merchant_id, &r.surviving_customer_id).await?;
            let m = conn.customer(&r.merchant_id, &r.merged_customer_id).await?;
            let prior = conn.claimed_request(&r.merchant_id, &r.request_id).await?;
            Ok::<_, Error>((s, m, prior))
        })?;
        // A request id used for another request must not move points before `mutate` refuses it.
        let answered = match prior {
            Some((op, hash)) if op == command.name() && hash == digest(r) => true,
            Some(_) => return Err(key_reused(&r.request_id)),
            None => false,
        };
        let survivor =
            survivor.ok_or_else(|| Error::customer_not_found(&r.surviving_customer_id))?;
        let merged = merged.ok_or_else(|| Error::customer_not_found(&r.merged_customer_id))?;
        let done_before =
            merged.state == STATE_MERGED && merged.merged_into == survivor.customer_id;
        if !done_before && !answered {
            // Refused before the ledger moves any points (the transaction below checks again).
            if survivor.state == STATE_MERGED || merged.state == STATE_MERGED {
                return Err(merge_conflict(
                    "already_merged",
                    "one of the customers is already merged into another",
                ));
            }
            let mut ledger = self.ledger.clone().ok_or(Error::Unavailable("ledger"))?;
            ledger
                .merge_accounts(ledger_pb::MergeAccountsRequest {
                    merchant_id: r.merchant_id.clone(),
                    request_id: format!("cards-merge-{}", merged.customer_id),
                    source_customer_id: merged.customer_id.clone(),
                    target_customer_id: survivor.customer_id.clone(),
                })
                .await
                .map_err(|status| {
                    tracing::warn!(code = ?status.code(), "ledger-svc MergeAccounts failed");
                    match status.code() {
                        // The ledger refused the request itself: a retry would not help.
                        Code::InvalidArgument
                        | Code::FailedPrecondition
                        | Code::AlreadyExists
                        | Code::NotFound => merge_conflict(
                            "ledger_refused",
                            "ledger-svc refused to merge the accounts",
                        ),
                        _ => Error::Unavailable("ledger"),
                    }
                })?;
        }
        self.mutate(&r.merchant_id, &r.request_id, r, command).await
    }

    pub(crate) async fn merge_customers(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        request_id: &str,
        r: &pb::MergeCustomersRequest,
        now: DateTime<Utc>,
    ) -> Result<pb::MergeCustomersResponse, Error> {
        // Lock both rows in a fixed order.
        let (first, second) = if r.surviving_customer_id < r.merged_customer_id {
            (&r.surviving_customer_id, &r.merged_customer_id)
        } else {
            (&r.merged_customer_id, &r.surviving_customer_id)
        };
        let a = tx.lock_customer(merchant, first).await?;
        let b = tx.lock_customer(merchant, second).await?;
        let (survivor, merged) = if first == &r.surviving_customer_id {
            (a, b)
        } else {
            (b, a)
        };
        let mut survivor =
            survivor.ok_or_else(|| Error::customer_not_found(&r.surviving_customer_id))?;
        let mut merged = merged.ok_or_else(|| Error::customer_not_found(&r.merged_customer_id))?;
        if merged.state == STATE_MERGED && merged.merged_into == survivor.customer_id {
            return Ok(pb::MergeCustomersResponse {
                customer: Some(self.customer_proto(tx, merchant, &survivor).await?),
                merged_customer_id: merged.customer_id,
                merged_now: false,
            });
        }
        if survivor.state == STATE_MERGED || merged.state == STATE_MERGED {
            return Err(merge_conflict(
                "already_merged",
                "one of the customers is already merged into another",
            ));
        }
        tx.move_identifiers(merchant, &merged.customer_id, &survivor.customer_id)
            .await?;
        tx.move_referrals(merchant, &merged.customer_id, &survivor.customer_id)
            .await?;
        let mut consents = survivor.consents_list()?;
        for c in merged.consents_list()? {
            merge_consent(&mut consents, c);
        }
        survivor.consent_mask = consent_mask(&consents);
        survivor.consents = pb::SetConsentResponse { consents }.encode_to_vec();
        if survivor.referrer_id == merged.customer_id {
            // Referred by the record it absorbs: by itself now.
            survivor.referrer_id.clear();
            survivor.referred_at = None;
        }
        if survivor.referrer_id.is_empty() && !merged.referrer_id.is_empty() {
            survivor.referrer_id = merged.referrer_id.clone();
            survivor.referred_at = merged.referred_at;
        }
        // The moved links may put the survivor below itself (it was referred by someone the
        // merged record referred): that link goes, the survivor heads its chain.
        if !survivor.referrer_id.is_empty()
            && Self::descends_from(tx, merchant, &survivor.referrer_id, &survivor.customer_id)
                .await?
        {
            survivor.referrer_id.clear();
            survivor.referred_at = None;
        }
        if survivor.external_id.is_none() {
            survivor.external_id = merged.external_id.take();
        }
        merged.external_id = None;
        merged.state = STATE_MERGED;
        merged.merged_into = survivor.customer_id.clone();
        merged.version += 1;
        merged.updated_at = Timestamp(now);
        tx.update_customer(merchant, &merged).await?;
        survivor.version += 1;
        survivor.updated_at = Timestamp(now);
        tx.update_customer(merchant, &survivor).await?;
        let payload = Payload::CustomersMerged(types::CustomersMerged {
            surviving_customer_id: survivor.customer_id.clone(),
            merged_customer_id: merged.customer_id.clone(),
        });
        tx.insert_events(
            merchant,
            &[event(
                merchant,
                &survivor.customer_id,
                request_id,
                payload,
                now,
            )],
            now,
        )
        .await?;
        Ok(pb::MergeCustomersResponse {
            customer: Some(self.customer_proto(tx, merchant, &survivor).await?),
            merged_customer_id: merged.customer_id,
            merged_now: true,
        })
    }
}

/// MERGE_CONFLICT; `detail` names the conflict: "same_customer", "already_merged",
/// "ledger_refused".
fn merge_conflict(detail: &'static str, message: &str) -> Error {
    Refusal::precondition("MERGE_CONFLICT", message)
        .with("detail", detail)
        .into()
}

/// ALREADY_EXISTS IDENTIFIER_TAKEN for the external id, unique per merchant like an
/// identifier: metadata `field` = "external_id" (instead of an identifier's `kind`) and the
/// owner's `customer_id`.
fn external_id_taken(owner: &str) -> Error {
    Refusal::new(
        Code::AlreadyExists,
        "IDENTIFIER_TAKEN",
        "external_id belongs to another customer",
    )
    .with("field", "external_id")
    .with("customer_id", owner)
    .into()
}

/// REFERRER_NOT_FOUND for a referrer named by id that is no active customer; other errors stay
/// what they are.
pub(crate) fn referrer_not_found(e: Error) -> Error {
    match e {
        Error::Refused(r) if matches!(r.reason, "CUSTOMER_NOT_FOUND" | "CUSTOMER_MERGED") => {
            Refusal::not_found("REFERRER_NOT_FOUND", "the referrer is not a customer").into()
        }
        e => e,
    }
}
