//! The merchant's cards settings: phone region, card-number formats, referral depth,
//! registration page.

use chrono::{DateTime, Utc};
use kopilka_proto::cards as pb;
use prost::Message;

use kopilka_runtime::validate::Violations;

use crate::cards::{check_len, Cards, MAX_ID};
use crate::error::Error;
use crate::identifiers::Formats;
use crate::store::CardsTx;

impl Cards {
    pub(crate) async fn get_settings(
        &self,
        r: &pb::GetCardsSettingsRequest,
    ) -> Result<pb::GetCardsSettingsResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.check()?;
        let s = self.settings_for_read(&r.merchant_id).await?;
        Ok(pb::GetCardsSettingsResponse {
            settings: Some(s.settings.clone()),
        })
    }

    pub(crate) async fn update_settings(
        &self,
        tx: &mut dyn CardsTx,
        merchant: &str,
        r: &pb::UpdateCardsSettingsRequest,
        now: DateTime<Utc>,
    ) -> Result<pb::UpdateCardsSettingsResponse, Error> {
        let given = r.settings.clone().unwrap_or_default();
        let paths = r
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        let mut v = Violations::new();
        if paths.is_empty() {
            v.add("update_mask", "is required");
        }
        let row = tx
            .settings(merchant)
            .await?
            .ok_or(Error::Db(sqlx::Error::RowNotFound))?;
        let mut s = pb::CardsSettings::decode(row.settings.as_slice())?;
        let all = paths.iter().any(|p| p == "*");
        for p in &paths {
            match p.as_str() {
                "*" => {}
                "default_phone_region"
                | "card_number_formats"
                | "ean13_try_without_check_digit"
                | "referral_max_depth"
                | "registration_page_url"
                | "registration_link_ttl" => {}
                other => v.add(
                    "update_mask",
                    format!("`{other}` is not a CardsSettings field"),
                ),
            }
        }
        let wanted = |f: &str| all || paths.iter().any(|p| p == f);
        if wanted("default_phone_region") {
            s.default_phone_region = given.default_phone_region.to_uppercase();
        }
        if wanted("card_number_formats") {
            s.card_number_formats = given.card_number_formats.clone();
        }
        if wanted("ean13_try_without_check_digit") {
            s.ean13_try_without_check_digit = given.ean13_try_without_check_digit;
        }
        if wanted("referral_max_depth") {
            s.referral_max_depth = given.referral_max_depth;
        }
        if wanted("registration_page_url") {
            s.registration_page_url = given.registration_page_url.clone();
        }
        if wanted("registration_link_ttl") {
            s.registration_link_ttl = given.registration_link_ttl;
        }
        if !(1..=10).contains(&s.referral_max_depth) {
            v.add("settings.referral_max_depth", "must be 1 to 10");
        }
        check_len(
            "settings.registration_page_url",
            &s.registration_page_url,
            512,
            &mut v,
        );
        if !s.registration_page_url.is_empty()
            && !s.registration_page_url.starts_with("https://")
            && !s.registration_page_url.starts_with("http://")
        {
            v.add("settings.registration_page_url", "must be an http(s) URL");
        }
        if s.registration_link_ttl
            .as_ref()
            .is_some_and(|d| d.seconds < 0)
        {
            v.add("settings.registration_link_ttl", "must not be negative");
        }
        if let Err(errors) = Formats::from_settings(&s, "settings.") {
            v.extend(errors);
        }
        v.check()?;
        tx.put_settings(merchant, &s.encode_to_vec(), now).await?;
        Ok(pb::UpdateCardsSettingsResponse { settings: Some(s) })
    }
}
