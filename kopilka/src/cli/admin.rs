//! `kopilka admin …`: stores, terminals, API keys and the program, over AdminService with an
//! admin key.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use kopilka_proto::gateway as gw;
use kopilka_proto::rules as rules_pb;

use super::table::Table;
use super::{or_dash, parse_timestamp, request_id, show_timestamp, CliResult, Client, Endpoint};

/// `kopilka admin`.
#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// Idempotency key of a mutating command; default a fresh uuid.
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Stores (shops, cafés …).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Terminals (cash registers).
    #[command(subcommand)]
    Terminal(TerminalCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The loyalty program.
    #[command(subcommand)]
    Program(ProgramCommand),
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Creates a store.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        address: String,
        /// The merchant's own store code.
        #[arg(long, default_value = "")]
        external_id: String,
    },
    /// Lists stores.
    List {
        /// Include closed stores.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TerminalCommand {
    /// Creates a terminal in a store.
    Create {
        #[arg(long)]
        store: String,
        #[arg(long)]
        name: String,
        /// The register's own id (serial, fiscal drive number).
        #[arg(long, default_value = "")]
        external_id: String,
    },
    /// Lists terminals.
    List {
        /// Only this store's.
        #[arg(long)]
        store: Option<String>,
        /// Include disabled terminals.
        #[arg(long)]
        all: bool,
    },
    /// Disables a terminal: its keys stop working.
    Disable { terminal_id: String },
    /// Enables a disabled terminal.
    Enable { terminal_id: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Scope {
    Terminal,
    Admin,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Issues an API key and prints its secret (once).
    Issue {
        #[arg(long, value_enum)]
        scope: Scope,
        /// The terminal (for --scope terminal).
        #[arg(long)]
        terminal: Option<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// Expiry, RFC 3339; default never.
        #[arg(long)]
        expires_at: Option<String>,
        /// Print only the secret (for scripts).
        #[arg(long)]
        secret_only: bool,
    },
    /// Lists API keys (never their secrets).
    List {
        /// Only this terminal's keys.
        #[arg(long)]
        terminal: Option<String>,
        /// Include revoked and expired keys.
        #[arg(long)]
        all: bool,
    },
    /// Revokes a key at once.
    Revoke { key_id: String },
}

#[derive(Subcommand, Debug)]
pub enum ProgramCommand {
    /// Validates, stores, publishes and activates a program document (YAML or JSON).
    Apply {
        file: PathBuf,
        /// Publish but do not activate.
        #[arg(long)]
        skip_activation: bool,
        /// When to activate, RFC 3339; default now.
        #[arg(long, conflicts_with = "skip_activation")]
        activate_at: Option<String>,
        /// Author's note.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Shows the active version and scheduled activations.
    Active,
}

pub async fn run(args: AdminArgs) -> CliResult {
    let client = Client::from_endpoint(&args.endpoint)?;
    let rid = request_id(&args.request_id);
    match args.command {
        AdminCommand::Store(cmd) => store(&client, cmd, rid).await,
        AdminCommand::Terminal(cmd) => terminal(&client, cmd, rid).await,
        AdminCommand::Key(cmd) => key(&client, cmd, rid).await,
        AdminCommand::Program(cmd) => program(&client, cmd, rid).await,
    }
}

async fn store(client: &Client, cmd: StoreCommand, request_id: String) -> CliResult {
    let mut admin = client.admin();
    match cmd {
        StoreCommand::Create {
            name,
            address,
            external_id,
        } => {
            let answer = admin
                .create_store(client.request(gw::CreateStoreRequest {
                    request_id,
                    store: Some(gw::Store {
                        name,
                        address,
                        external_id,
                        active: true,
                        ..Default::default()
                    }),
                }))
                .await?
                .into_inner();
            let store = answer.store.unwrap_or_default();
            println!("Store created: {}", store.store_id);
            println!("  name:    {}", store.name);
            println!("  address: {}", or_dash(&store.address));
        }
        StoreCommand::List { all } => {
            let mut stores = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = admin
                    .list_stores(client.request(gw::ListStoresRequest {
                        include_inactive: all,
                        page_size: 100,
                        page_token,
                    }))
                    .await?
                    .into_inner();
                stores.extend(page.stores);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let mut table = Table::new(["store_id", "name", "address", "active", "created"]);
            for s in &stores {
                table.row([
                    s.store_id.clone(),
                    s.name.clone(),
                    or_dash(&s.address).to_owned(),
                    yes_no(s.active),
                    show_timestamp(&s.created_at),
                ]);
            }
            print!("{}", table.render(0));
            println!("{} store(s)", stores.len());
        }
    }
    Ok(())
}

async fn terminal(client: &Client, cmd: TerminalCommand, request_id: String) -> CliResult {
    let mut admin = client.admin();
    match cmd {
        TerminalCommand::Create {
            store,
            name,
            external_id,
        } => {
            let t = admin
                .create_terminal(client.request(gw::CreateTerminalRequest {
                    request_id,
                    store_id: store,
                    name,
                    external_id,
                }))
                .await?
                .into_inner()
                .terminal
                .unwrap_or_default();
            println!("Terminal created: {}", t.terminal_id);
            println!("  store: {}", t.store_id);
            println!("  name:  {}", t.name);
            println!(
                "Issue it a key: kopilka admin key issue --scope terminal --terminal {}",
                t.terminal_id
            );
        }
        TerminalCommand::List { store, all } => {
            let mut terminals = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = admin
                    .list_terminals(client.request(gw::ListTerminalsRequest {
                        store_id: store.clone().unwrap_or_default(),
                        include_disabled: all,
                        page_size: 100,
                        page_token,
                    }))
                    .await?
                    .into_inner();
                terminals.extend(page.terminals);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let mut table = Table::new(["terminal_id", "store_id", "name", "enabled", "last seen"]);
            for t in &terminals {
                table.row([
                    t.terminal_id.clone(),
                    t.store_id.clone(),
                    t.name.clone(),
                    yes_no(t.enabled),
                    show_timestamp(&t.last_seen_at),
                ]);
            }
            print!("{}", table.render(0));
            println!("{} terminal(s)", terminals.len());
        }
        TerminalCommand::Disable { terminal_id } => {
            let t = admin
                .disable_terminal(client.request(gw::DisableTerminalRequest {
                    request_id,
                    terminal_id,
                }))
                .await?
                .into_inner()
                .terminal
                .unwrap_or_default();
            println!(
                "Terminal {} disabled; its keys no longer work.",
                t.terminal_id
            );
        }
        TerminalCommand::Enable { terminal_id } => {
            let t = admin
                .enable_terminal(client.request(gw::EnableTerminalRequest {
                    request_id,
                    terminal_id,
                }))
                .await?
                .into_inner()
                .terminal
                .unwrap_or_default();
            println!("Terminal {} enabled.", t.terminal_id);
        }
    }
    Ok(())
}

async fn key(client: &Client, cmd: KeyCommand, request_id: String) -> CliResult {
    let mut admin = client.admin();
    match cmd {
        KeyCommand::Issue {
            scope,
            terminal,
            name,
            expires_at,
            secret_only,
        } => {
            let scope = match scope {
                Scope::Terminal => {
                    if terminal.is_none() {
                        crate::cli_bail!("--scope terminal needs --terminal <terminal id>");
                    }
                    gw::KeyScope::Terminal
                }
                Scope::Admin => {
                    if terminal.is_some() {
                        crate::cli_bail!("--terminal is only for --scope terminal");
                    }
                    gw::KeyScope::Admin
                }
            };
            let expires_at = expires_at.as_deref().map(parse_timestamp).transpose()?;
            let answer = admin
                .issue_api_key(client.request(gw::IssueApiKeyRequest {
                    request_id,
                    scope: scope as i32,
                    terminal_id: terminal.unwrap_or_default(),
                    name,
                    expires_at,
                }))
                .await?
                .into_inner();
            let key = answer.api_key.unwrap_or_default();
            if secret_only {
                if answer.secret.is_empty() {
                    crate::cli_bail!(
                        "the gateway returned no secret (a repeated request id): revoke key {} and issue another",
                        key.key_id
                    );
                }
                println!("{}", answer.secret);
                return Ok(());
            }
            println!("API key issued: {}", key.key_id);
            println!("  scope:    {}", scope_name(key.scope));
            if !key.terminal_id.is_empty() {
                println!("  terminal: {} (store {})", key.terminal_id, key.store_id);
            }
            println!("  name:     {}", or_dash(&key.name));
            println!("  expires:  {}", show_timestamp(&key.expires_at));
            println!();
            if answer.secret.is_empty() {
                println!(
                    "No secret: this request id was used before, and a secret is shown only once."
                );
                println!(
                    "Revoke the key (kopilka admin key revoke {}) and issue another.",
                    key.key_id
                );
            } else {
                println!(
                    "Secret (shown only this once; store it now, Kopilka keeps only a digest):"
                );
                println!();
                println!("    {}", answer.secret);
                println!();
                println!("Use it as the metadata `authorization: Bearer <secret>`.");
            }
        }
        KeyCommand::List { terminal, all } => {
            let mut keys = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = admin
                    .list_api_keys(client.request(gw::ListApiKeysRequest {
                        terminal_id: terminal.clone().unwrap_or_default(),
                        include_revoked: all,
                        page_size: 100,
                        page_token,
                    }))
                    .await?
                    .into_inner();
                keys.extend(page.api_keys);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let mut table = Table::new([
                "key_id",
                "scope",
                "name",
                "terminal",
                "prefix",
                "created",
                "last used",
                "revoked",
            ]);
            for k in &keys {
                table.row([
                    k.key_id.clone(),
                    scope_name(k.scope).to_owned(),
                    or_dash(&k.name).to_owned(),
                    or_dash(&k.terminal_id).to_owned(),
                    format!("{}…", k.prefix),
                    show_timestamp(&k.created_at),
                    show_timestamp(&k.last_used_at),
                    show_timestamp(&k.revoked_at),
                ]);
            }
            print!("{}", table.render(0));
            println!("{} key(s)", keys.len());
        }
        KeyCommand::Revoke { key_id } => {
            let key = admin
                .revoke_api_key(client.request(gw::RevokeApiKeyRequest { request_id, key_id }))
                .await?
                .into_inner()
                .api_key
                .unwrap_or_default();
            println!(
                "Key {} revoked at {}.",
                key.key_id,
                show_timestamp(&key.revoked_at)
            );
        }
    }
    Ok(())
}

/// Reads a program document (YAML or JSON) from `path`.
pub fn read_program(path: &std::path::Path) -> anyhow::Result<rules_pb::Program> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    rules_svc::document::from_yaml(&text).with_context(|| format!("in {}", path.display()))
}

async fn program(client: &Client, cmd: ProgramCommand, request_id: String) -> CliResult {
    let mut admin = client.admin();
    match cmd {
        ProgramCommand::Apply {
            file,
            skip_activation,
            activate_at,
            comment,
        } => {
            let program = read_program(&file)?;
            let activate_at = activate_at.as_deref().map(parse_timestamp).transpose()?;
            let answer = admin
                .apply_program(client.request(gw::ApplyProgramRequest {
                    request_id,
                    program: Some(program),
                    activate_at,
                    skip_activation,
                    comment,
                }))
                .await?
                .into_inner();
            let version = answer.version.unwrap_or_default();
            let name = version
                .program
                .as_ref()
                .map(|p| p.name.as_str())
                .unwrap_or_default();
            println!(
                "Program published: version {} {}",
                version.version,
                quoted(name)
            );
            println!("  fingerprint: {}", or_dash(&version.fingerprint));
            match (&answer.activation, answer.active_now) {
                (_, true) => println!("  active now"),
                (Some(a), false) => {
                    println!(
                        "  activation {} scheduled at {}",
                        a.activation_id,
                        show_timestamp(&a.activate_at)
                    )
                }
                (None, false) => {
                    println!("  not activated (activate it with AdminService.ActivateProgram)")
                }
            }
            print_warnings(&answer.warnings);
        }
        ProgramCommand::Active => {
            let answer = admin
                .get_active_program(client.request(gw::GetActiveProgramRequest { at: None }))
                .await?
                .into_inner();
            match &answer.version {
                Some(v) => {
                    let program = v.program.clone().unwrap_or_default();
                    println!(
                        "Active program: version {} {}",
                        v.version,
                        quoted(&program.name)
                    );
                    println!("  published:   {}", show_timestamp(&v.published_at));
                    println!("  fingerprint: {}", or_dash(&v.fingerprint));
                    if !program.description.is_empty() {
                        println!("  {}", program.description.trim());
                    }
                    if !program.rules.is_empty() {
                        let mut table = Table::new(["rule", "name"]);
                        for r in &program.rules {
                            table.row([r.id.clone(), r.name.clone()]);
                        }
                        println!();
                        print!("{}", table.render(2));
                    }
                }
                None => println!("No active program."),
            }
            if !answer.scheduled.is_empty() {
                println!();
                println!("Scheduled activations:");
                for a in &answer.scheduled {
                    println!(
                        "  {}  version {} at {}",
                        a.activation_id,
                        a.version,
                        show_timestamp(&a.activate_at)
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_warnings(warnings: &[rules_pb::Violation]) {
    if warnings.is_empty() {
        return;
    }
    println!("Warnings:");
    for w in warnings {
        println!(
            "  - {}\n      {}: {}",
            or_dash(&w.field),
            w.code,
            w.description
        );
    }
}

fn quoted(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("`{name}`")
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn scope_name(scope: i32) -> &'static str {
    match gw::KeyScope::try_from(scope) {
        Ok(gw::KeyScope::Terminal) => "TERMINAL",
        Ok(gw::KeyScope::Admin) => "ADMIN",
        Ok(gw::KeyScope::Platform) => "PLATFORM",
        _ => "?",
    }
}
