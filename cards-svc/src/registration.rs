//! Registration links and self-registration (C6). A link's token names the merchant, the link
//! and its expiry, signed with HMAC-SHA256 under a per-merchant secret, so a web page can
//! register a customer without holding an API key; the link row decides whether it still works
//! (revoked, used up).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use kopilka_proto::cards as pb;
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::Violations;
use kopilka_runtime::Timestamp;
use prost::Message;
use sha2::Sha256;

use crate::cards::{
    check_len, instant, new_id, next_token, page, timestamp, Cards, Command, MerchantSettings,
    MAX_ID,
};
use crate::customers::{referrer_not_found, Registration};
use crate::error::Error;
use crate::store::{CardsTx, LinkRow};

type HmacSha256 = Hmac<Sha256>;

fn invalid_token() -> Error {
    Refusal::precondition(
        "REGISTRATION_TOKEN_INVALID",
        "the registration link is not valid",
    )
    .into()
}

fn expired_token() -> Error {
    Refusal::precondition(
        "REGISTRATION_TOKEN_EXPIRED",
        "the registration link has expired or is used up",
    )
    .into()
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// `<payload>.<signature>`, both base64url; the payload is "merchant \n link \n expiry".
pub(crate) fn sign(secret: &[u8], merchant: &str, link_id: &str, expires: i64) -> String {
    let payload = format!("{merchant}\n{link_id}\n{expires}");
    let mut m = mac(secret);
    m.update(payload.as_bytes());
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload.as_bytes()),
        URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
    )
}

/// A token taken apart, not yet verified (the merchant's secret is needed for that).
struct Token {
    merchant: String,
    link_id: String,
    expires: i64,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

fn token_merchant(token: &str) -> Option<Token> {
    if token.len() > 512 {
        return None;
    }
    let (payload, signature) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let text = std::str::from_utf8(&payload).ok()?;
    let mut parts = text.split('\n');
    let merchant = parts.next()?.to_owned();
    let link = parts.next()?.to_owned();
    let expires = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Token {
        merchant,
        link_id: link,
        expires,
        payload,
        signature,
    })
}

fn link_proto(
    row: &LinkRow,
    token: String,
    s: &MerchantSettings,
) -> Result<pb::RegistrationLink, Error> {
    let mut link = pb::RegistrationLink::decode(row.link.as_slice())?;
    link.uses = row.uses as u32;
    link.revoked = row.revoked;
    link.url = if s.settings.registration_page_url.is_empty() || token.is_empty() {
        String::new()
    } else {
        format!("{}?t={token}", s.settings.registration_page_url)
    };
    link.token = token;
    Ok(link)
}

impl Cards {
    pub(crate) async fn create_link(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::CreateRegistrationLinkRequest,
        s: &MerchantSettings,
        now: DateTime<Utc>,
    ) -> Result<pb::CreateRegistrationLinkResponse, Error> {
        let mut v = Violations::new();
        check_len("store_id", &r.store_id, MAX_ID, &mut v);
        check_len("campaign", &r.campaign, 64, &mut v);
        v.id(
            "referrer_customer_id",
            &r.referrer_customer_id,
            MAX_ID,
            false,
        );
        let expires_at = match &r.expires_at {
            Some(t) => {
                let at = instant("expires_at", t, &mut v);
                if at.is_some_and(|at| at <= now) {
                    v.add("expires_at", "must be in the future");
                }
                at
            }
            None => s
                .settings
                .registration_link_ttl
                .as_ref()
                .filter(|d| d.seconds > 0)
                .map(|d| now + chrono::Duration::seconds(d.seconds)),
        };
        if r.max_uses > i32::MAX as u32 {
            v.add("max_uses", "is too large");
        }
        v.check()?;
        if !r.referrer_customer_id.is_empty() {
            self.active_customer(tx, merchant, &r.referrer_customer_id)
                .await
                .map_err(referrer_not_found)?;
        }
        let link_id = new_id();
        let link = pb::RegistrationLink {
            link_id: link_id.clone(),
            store_id: r.store_id.clone(),
            campaign: r.campaign.clone(),
            referrer_customer_id: r.referrer_customer_id.clone(),
            expires_at: expires_at.map(timestamp),
            max_uses: r.max_uses,
            created_at: Some(timestamp(now)),
            ..Default::default()
        };
        let row = LinkRow {
            link_id: link_id.clone(),
            link: link.encode_to_vec(),
            max_uses: r.max_uses as i32,
            uses: 0,
            revoked: false,
            expires_at: expires_at.map(Timestamp),
            created_at: Timestamp(now),
        };
        tx.insert_link(merchant, &row).await?;
        let token = sign(
            &s.link_secret,
            merchant,
            &link_id,
            expires_at.map_or(0, |t| t.timestamp()),
        );
        Ok(pb::CreateRegistrationLinkResponse {
            link: Some(link_proto(&row, token, s)?),
        })
    }

    pub(crate) async fn list_links(
        &self,
        r: &pb::ListRegistrationLinksRequest,
    ) -> Result<pb::ListRegistrationLinksResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        let (limit, after) =
            page::<(DateTime<Utc>, String)>(r.page_size, &r.page_token, 50, 100, &mut v);
        v.check()?;
        let s = self.settings_for_read(&r.merchant_id).await?;
        let rows = crate::on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            conn.links(&r.merchant_id, r.include_inactive, Utc::now(), limit, after.as_ref()).await?
        });
        let mut links = Vec::with_capacity(rows.len());
        for row in &rows {
            let expires = row.expires_at.map_or(0, |t| t.0.timestamp());
            let token = sign(&s.link_secret, &r.merchant_id, &row.link_id, expires);
            links.push(link_proto(row, token, &s)?);
        }
        Ok(pb::ListRegistrationLinksResponse {
            next_page_token: next_token(&rows, limit, |row| {
                (row.created_at.0, row.link_id.clone())
            }),
            links,
        })
    }

    pub(crate) async fn revoke_link(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::RevokeRegistrationLinkRequest,
        s: &MerchantSettings,
    ) -> Result<pb::RevokeRegistrationLinkResponse, Error> {
        let mut v = Violations::new();
        v.id("link_id", &r.link_id, MAX_ID, true);
        v.check()?;
        let mut row = tx.lock_link(merchant, &r.link_id).await?.ok_or_else(|| {
            Refusal::not_found("LINK_NOT_FOUND", format!("link `{}` not found", r.link_id))
                .with("link_id", &r.link_id)
        })?;
        if !row.revoked {
            row.revoked = true;
            tx.update_link(merchant, &row).await?;
        }
        Ok(pb::RevokeRegistrationLinkResponse {
            link: Some(link_proto(&row, String::new(), s)?),
        })
    }

    /// Verifies a token: the merchant it names, and its link row (locked in a write transaction).
    async fn verify_token(
        &self,
        tx: &mut dyn CardsTx,
        merchant_hint: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, LinkRow), Error> {
        let Token {
            merchant,
            link_id,
            expires,
            payload,
            signature,
        } = token_merchant(token).ok_or_else(invalid_token)?;
        if !merchant_hint.is_empty() && merchant_hint != merchant {
            return Err(invalid_token());
        }
        let secret = tx
            .settings(&merchant)
            .await?
            .ok_or_else(invalid_token)?
            .link_secret;
        let mut m = mac(&secret);
        m.update(&payload);
        m.verify_slice(&signature).map_err(|_| invalid_token())?;
        let row = tx
            .lock_link(&merchant, &link_id)
            .await?
            .ok_or_else(invalid_token)?;
        if row.revoked {
            return Err(invalid_token());
        }
        let expired = (expires > 0 && now.timestamp() >= expires)
            || (row.max_uses > 0 && row.uses >= row.max_uses);
        if expired {
            return Err(expired_token());
        }
        Ok((merchant, row))
    }

    pub(crate) async fn resolve_token(
        &self,
        r: &pb::ResolveRegistrationTokenRequest,
    ) -> Result<pb::ResolveRegistrationTokenResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, false);
        if r.token.is_empty() {
            v.add("token", "is required");
        }
        v.check()?;
        let (merchant, row) = crate::on_conn!(&self.db, conn => {
            let conn: &mut dyn CardsTx = &mut conn;
            self.verify_token(conn, &r.merchant_id, &r.token, Utc::now()).await?
        });
        let s = self.settings_for_read(&merchant).await?;
        Ok(pb::ResolveRegistrationTokenResponse {
            link: Some(link_proto(&row, String::new(), &s)?),
            merchant_id: merchant,
        })
    }

    /// SelfRegister: the merchant comes from the token, so the idempotency scope is known only
    /// after reading it.
    pub(crate) async fn self_register_call(
        &self,
        r: &pb::SelfRegisterRequest,
    ) -> Result<pb::SelfRegisterResponse, Error> {
        let merchant = match token_merchant(&r.token) {
            Some(t) => t.merchant,
            None => return Err(invalid_token()),
        };
        if !r.merchant_id.is_empty() && r.merchant_id != merchant {
            return Err(invalid_token());
        }
        self.mutate(&merchant, &r.request_id, r, Command::SelfRegister(r))
            .await
    }

    pub(crate) async fn self_register(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::SelfRegisterRequest,
        s: &MerchantSettings,
        now: DateTime<Utc>,
    ) -> Result<pb::SelfRegisterResponse, Error> {
        let profile = r.profile.clone().unwrap_or_default();
        if profile.phone.trim().is_empty() {
            return Err(Error::invalid("profile.phone", "is required"));
        }
        let (_, mut row) = self.verify_token(tx, merchant, &r.token, now).await?;
        let link = pb::RegistrationLink::decode(row.link.as_slice())?;
        let registration = pb::RegistrationSource {
            channel: pb::RegistrationChannel::SelfWeb as i32,
            store_id: link.store_id.clone(),
            terminal_id: String::new(),
            link_id: link.link_id.clone(),
            campaign: link.campaign.clone(),
        };
        let (customer, chain) = self
            .register(
                tx,
                merchant,
                Registration {
                    profile: &profile,
                    identifiers: &[],
                    referrer: r.referrer.as_ref(),
                    referrer_id: Some(&link.referrer_customer_id),
                    consents: &r.consents,
                    registration,
                    registered_at: None,
                    external_id: "",
                    correlation: &r.request_id,
                },
                s,
                now,
            )
            .await?;
        row.uses += 1;
        tx.update_link(merchant, &row).await?;
        Ok(pb::SelfRegisterResponse {
            customer: Some(customer),
            referrer_chain_customer_ids: chain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_a_changed_byte_breaks_it() {
        let t = sign(b"secret", "m1", "link-1", 0);
        let token = token_merchant(&t).unwrap();
        assert_eq!(
            (
                token.merchant.as_str(),
                token.link_id.as_str(),
                token.expires
            ),
            ("m1", "link-1", 0)
        );
        let mut h = mac(b"secret");
        h.update(&token.payload);
        assert!(h.verify_slice(&token.signature).is_ok());
        let mut h = mac(b"other secret");
        h.update(&token.payload);
        assert!(h.verify_slice(&token.signature).is_err());
        assert!(token_merchant("garbage").is_none());
        assert!(token_merchant(&"a".repeat(600)).is_none());
    }
}
