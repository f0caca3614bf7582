//! The demo tenant the embedded default starts with: one merchant, one store, one terminal and
//! its key, and an admin key, so a newcomer can ring up a receipt at once.

use kopilka_runtime::Timestamp;
use secrecy::SecretString;

use crate::keys::{self, GeneratedKey, KeyScope};
use crate::tenancy::{Merchant, Store, Tenancy, Terminal};

/// The demo merchant's id.
pub const DEMO_MERCHANT_ID: &str = "demo";
/// The demo store's id.
pub const DEMO_STORE_ID: &str = "main";
/// The demo terminal's id.
pub const DEMO_TERMINAL_ID: &str = "till-1";

/// What [`seed_demo`] found or created. Keys are present only when they were created now:
/// only digests are stored, so a key can be shown once.
pub struct DemoTenant {
    pub merchant_id: String,
    pub store_id: String,
    pub terminal_id: String,
    pub terminal_key: Option<SecretString>,
    pub admin_key: Option<SecretString>,
}

/// A tenant to create: a merchant (RUB, Europe/Moscow, phone region RU) with one store and one
/// terminal.
pub struct Tenant<'a> {
    pub merchant_id: &'a str,
    pub merchant_name: &'a str,
    pub store_id: &'a str,
    pub store_name: &'a str,
    pub address: &'a str,
    pub terminal_id: &'a str,
    pub terminal_name: &'a str,
}

/// The keys of a tenant created by [`create_tenant`], shown this once.
pub struct TenantKeys {
    pub terminal_key: GeneratedKey,
    pub admin_key: GeneratedKey,
}

/// Creates `t` with a terminal key and an admin key; `None` (and nothing changed) when the
/// merchant exists already.
pub async fn create_tenant(
    tenancy: &Tenancy,
    t: &Tenant<'_>,
    now: Timestamp,
) -> Result<Option<TenantKeys>, sqlx::Error> {
    let created = tenancy
        .create_merchant(&Merchant {
            merchant_id: t.merchant_id.to_owned(),
            name: t.merchant_name.to_owned(),
            currency: "RUB".to_owned(),
            time_zone: "Europe/Moscow".to_owned(),
            phone_region: "RU".to_owned(),
            created_at: now,
        })
        .await?;
    if !created {
        return Ok(None);
    }
    tenancy
        .insert_store(&Store {
            merchant_id: t.merchant_id.to_owned(),
            store_id: t.store_id.to_owned(),
            name: t.store_name.to_owned(),
            address: t.address.to_owned(),
            time_zone: String::new(),
            external_id: String::new(),
            wallet_location_text: String::new(),
            latitude: None,
            longitude: None,
            active: true,
            created_at: now,
        })
        .await?;
    tenancy
        .insert_terminal(&Terminal {
            merchant_id: t.merchant_id.to_owned(),
            terminal_id: t.terminal_id.to_owned(),
            store_id: t.store_id.to_owned(),
            name: t.terminal_name.to_owned(),
            external_id: String::new(),
            disabled_at: None,
            created_at: now,
            last_seen_at: None,
        })
        .await?;
    let terminal_key = keys::generate();
    let terminal = Some(t.terminal_id);
    tenancy
        .insert_key(
            t.merchant_id,
            &terminal_key,
            KeyScope::Terminal,
            terminal,
            "terminal",
            now,
        )
        .await?;
    let admin_key = keys::generate();
    tenancy
        .insert_key(
            t.merchant_id,
            &admin_key,
            KeyScope::Admin,
            None,
            "admin",
            now,
        )
        .await?;
    Ok(Some(TenantKeys {
        terminal_key,
        admin_key,
    }))
}

/// Creates the demo tenant unless it exists already; safe to call on every start.
pub async fn seed_demo(tenancy: &Tenancy, now: Timestamp) -> Result<DemoTenant, sqlx::Error> {
    let tenant = Tenant {
        merchant_id: DEMO_MERCHANT_ID,
        merchant_name: "Demo café",
        store_id: DEMO_STORE_ID,
        store_name: "Main street",
        address: "1 Main street",
        terminal_id: DEMO_TERMINAL_ID,
        terminal_name: "Till 1",
    };
    let keys = create_tenant(tenancy, &tenant, now).await?;
    Ok(DemoTenant {
        merchant_id: DEMO_MERCHANT_ID.to_owned(),
        store_id: DEMO_STORE_ID.to_owned(),
        terminal_id: DEMO_TERMINAL_ID.to_owned(),
        terminal_key: keys.as_ref().map(|k| k.terminal_key.plaintext.clone()),
        admin_key: keys.map(|k| k.admin_key.plaintext),
    })
}
