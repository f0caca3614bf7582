//! The demo tenant the embedded default starts with: one merchant, one store, one terminal and
//! its key, and an admin key, so a newcomer can ring up a receipt at once.

use kopilka_runtime::Timestamp;
use secrecy::SecretString;

use crate::keys::{self, KeyScope};
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

/// Creates the demo tenant unless it exists already; safe to call on every start.
pub async fn seed_demo(tenancy: &Tenancy, now: Timestamp) -> Result<DemoTenant, sqlx::Error> {
    let mut demo = DemoTenant {
        merchant_id: DEMO_MERCHANT_ID.to_owned(),
        store_id: DEMO_STORE_ID.to_owned(),
        terminal_id: DEMO_TERMINAL_ID.to_owned(),
        terminal_key: None,
        admin_key: None,
    };
    let created = tenancy
        .create_merchant(&Merchant {
            merchant_id: DEMO_MERCHANT_ID.to_owned(),
            name: "Demo café".to_owned(),
            currency: "RUB".to_owned(),
            time_zone: "Europe/Moscow".to_owned(),
            phone_region: "RU".to_owned(),
            created_at: now,
        })
        .await?;
    if !created {
        return Ok(demo);
    }
    tenancy
        .create_store(&Store {
            merchant_id: DEMO_MERCHANT_ID.to_owned(),
            store_id: DEMO_STORE_ID.to_owned(),
            name: "Main street".to_owned(),
            address: "1 Main street".to_owned(),
            created_at: now,
        })
        .await?;
    tenancy
        .create_terminal(&Terminal {
            merchant_id: DEMO_MERCHANT_ID.to_owned(),
            terminal_id: DEMO_TERMINAL_ID.to_owned(),
            store_id: DEMO_STORE_ID.to_owned(),
            name: "Till 1".to_owned(),
            disabled_at: None,
            created_at: now,
        })
        .await?;
    let terminal_key = keys::generate();
    tenancy
        .insert_key(
            DEMO_MERCHANT_ID,
            &terminal_key,
            KeyScope::Terminal,
            Some(DEMO_TERMINAL_ID),
            "demo terminal",
            now,
        )
        .await?;
    let admin_key = keys::generate();
    tenancy
        .insert_key(
            DEMO_MERCHANT_ID,
            &admin_key,
            KeyScope::Admin,
            None,
            "demo admin",
            now,
        )
        .await?;
    demo.terminal_key = Some(terminal_key.plaintext);
    demo.admin_key = Some(admin_key.plaintext);
    Ok(demo)
}
