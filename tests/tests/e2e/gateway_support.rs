//! Gateway worlds for end-to-end tests, made through the gateway's own AdminService: a store with
//! a terminal and that terminal's key.

use kopilka_proto::gateway as gw;
use kopilka_proto::gateway::admin_service_client::AdminServiceClient;
use kopilka_tests::{authed, Channel};

/// A store and the key of its terminal.
pub struct Till {
    pub store_id: String,
    /// The terminal key's plaintext (`kpk_…`).
    pub key: String,
}

/// Creates store `name` (in `time_zone`, "" = none) with one terminal and a terminal key, with
/// the admin key `admin_key`; `tag` keeps the request ids apart.
pub async fn till_in_new_store(
    admin: &mut AdminServiceClient<Channel>,
    admin_key: &str,
    tag: &str,
    name: &str,
    time_zone: &str,
) -> Till {
    let store = admin
        .create_store(authed(
            gw::CreateStoreRequest {
                request_id: format!("{tag}-store"),
                store: Some(gw::Store {
                    name: name.into(),
                    time_zone: time_zone.into(),
                    ..Default::default()
                }),
            },
            admin_key,
        ))
        .await
        .expect("CreateStore")
        .into_inner()
        .store
        .expect("a store");
    let terminal = admin
        .create_terminal(authed(
            gw::CreateTerminalRequest {
                request_id: format!("{tag}-terminal"),
                store_id: store.store_id.clone(),
                name: format!("{name} till"),
                ..Default::default()
            },
            admin_key,
        ))
        .await
        .expect("CreateTerminal")
        .into_inner()
        .terminal
        .expect("a terminal");
    let key = admin
        .issue_api_key(authed(
            gw::IssueApiKeyRequest {
                request_id: format!("{tag}-key"),
                scope: gw::KeyScope::Terminal as i32,
                terminal_id: terminal.terminal_id.clone(),
                name: format!("{name} till key"),
                ..Default::default()
            },
            admin_key,
        ))
        .await
        .expect("IssueApiKey")
        .into_inner()
        .secret;
    Till {
        store_id: store.store_id,
        key,
    }
}
