//! Gateway tenants for tests: [`TestSuite::seed_merchant`] creates a merchant with a store, a
//! terminal, an admin key and a terminal key straight in the gateway's database (the suite does
//! not seed the demo tenant), and [`authed`] puts a key on a request.

use gateway::keys::{self, KeyScope};
use gateway::tenancy::{Merchant, Store, Tenancy, Terminal};
use kopilka_runtime::Timestamp;
use secrecy::ExposeSecret;

use crate::TestSuite;

/// What [`TestSuite::seed_merchant`] created. The keys are plaintext `kpk_…` strings.
#[derive(Debug, Clone)]
pub struct SeededMerchant {
    pub merchant_id: String,
    /// `"<merchant_id>-store"`.
    pub store_id: String,
    /// `"<merchant_id>-till"`, in `store_id`.
    pub terminal_id: String,
    pub admin_key: String,
    pub terminal_key: String,
}

impl TestSuite {
    /// Creates merchant `merchant_id` (RUB, Europe/Moscow, RU) with one store, one terminal,
    /// an admin key and a terminal key for that terminal. Panics if the merchant exists.
    pub async fn seed_merchant(&self, merchant_id: &str) -> SeededMerchant {
        seed_merchant(&self.gateway_db, merchant_id).await
    }
}

/// [`TestSuite::seed_merchant`] in any gateway database (e.g. one of a gateway process).
pub async fn seed_merchant(gateway_db: &kopilka_runtime::Db, merchant_id: &str) -> SeededMerchant {
    let tenancy = Tenancy::new(gateway_db.clone());
    let now = Timestamp::now();
    let store_id = format!("{merchant_id}-store");
    let terminal_id = format!("{merchant_id}-till");
    let created = tenancy
        .create_merchant(&Merchant {
            merchant_id: merchant_id.to_owned(),
            name: format!("Merchant {merchant_id}"),
            currency: "RUB".to_owned(),
            time_zone: "Europe/Moscow".to_owned(),
            phone_region: "RU".to_owned(),
            created_at: now,
        })
        .await
        .expect("insert merchant");
    assert!(created, "merchant {merchant_id} was seeded already");
    tenancy
        .create_store(&Store {
            merchant_id: merchant_id.to_owned(),
            store_id: store_id.clone(),
            name: "Test store".to_owned(),
            address: "1 Test street".to_owned(),
            created_at: now,
        })
        .await
        .expect("insert store");
    tenancy
        .create_terminal(&Terminal {
            merchant_id: merchant_id.to_owned(),
            terminal_id: terminal_id.clone(),
            store_id: store_id.clone(),
            name: "Test till".to_owned(),
            disabled_at: None,
            created_at: now,
        })
        .await
        .expect("insert terminal");
    let terminal_key = keys::generate();
    tenancy
        .insert_key(
            merchant_id,
            &terminal_key,
            KeyScope::Terminal,
            Some(&terminal_id),
            "test terminal",
            now,
        )
        .await
        .expect("insert terminal key");
    let admin_key = keys::generate();
    tenancy
        .insert_key(
            merchant_id,
            &admin_key,
            KeyScope::Admin,
            None,
            "test admin",
            now,
        )
        .await
        .expect("insert admin key");
    SeededMerchant {
        merchant_id: merchant_id.to_owned(),
        store_id,
        terminal_id,
        admin_key: admin_key.plaintext.expose_secret().to_owned(),
        terminal_key: terminal_key.plaintext.expose_secret().to_owned(),
    }
}

/// `msg` as a request carrying `authorization: Bearer <key>`.
pub fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("an ASCII key"),
    );
    request
}
