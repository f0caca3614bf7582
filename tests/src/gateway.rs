//! Gateway tenants for tests: [`TestSuite::seed_merchant`] creates a merchant with a store, a
//! terminal, an admin key and a terminal key straight in the gateway's database (the suite does
//! not seed the demo tenant), and [`authed`] puts a key on a request.

use gateway::seed::{create_tenant, Tenant};
use gateway::tenancy::Tenancy;
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
    let store_id = format!("{merchant_id}-store");
    let terminal_id = format!("{merchant_id}-till");
    let tenant = Tenant {
        merchant_id,
        merchant_name: &format!("Merchant {merchant_id}"),
        store_id: &store_id,
        store_name: "Test store",
        address: "1 Test street",
        terminal_id: &terminal_id,
        terminal_name: "Test till",
    };
    let keys = create_tenant(&tenancy, &tenant, Timestamp::now())
        .await
        .expect("seed the merchant")
        .unwrap_or_else(|| panic!("merchant {merchant_id} was seeded already"));
    SeededMerchant {
        merchant_id: merchant_id.to_owned(),
        store_id,
        terminal_id,
        admin_key: keys.admin_key.plaintext.expose_secret().to_owned(),
        terminal_key: keys.terminal_key.plaintext.expose_secret().to_owned(),
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
