//! The whole Kopilka suite in one process: the embedded default (`kopilka dev`) and the
//! end-to-end tests both start the five services through [`Suite`].
//!
//! - [`Suite`]: builds cards, rules, ledger, notify and the gateway, and runs them until shutdown.
//! - [`SuiteConfig`]: the five services' settings; [`SuiteConfig::embedded`] puts them on SQLite.
//! - [`demo`]: the demo merchant, keys and program seeded on first start.

pub mod demo;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use kopilka_runtime::host::{Host, ServiceSettings};
use kopilka_runtime::service_auth::ServiceToken;
use tokio_util::sync::CancellationToken;

/// The ports of the five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub gateway: u16,
    pub cards: u16,
    pub rules: u16,
    pub ledger: u16,
    pub notify: u16,
}

impl Ports {
    /// 50051 (gateway), 50052 (cards), 50053 (rules), 50054 (ledger), 50055 (notify).
    pub const DEFAULT: Ports = Ports {
        gateway: gateway::config::DEFAULT_PORT,
        cards: cards_svc::config::DEFAULT_PORT,
        rules: rules_svc::config::DEFAULT_PORT,
        ledger: ledger_svc::config::DEFAULT_PORT,
        notify: notify_svc::config::DEFAULT_PORT,
    };

    /// Every service on a free port chosen by the OS (for tests).
    pub const RANDOM: Ports = Ports {
        gateway: 0,
        cards: 0,
        rules: 0,
        ledger: 0,
        notify: 0,
    };
}

/// The settings of all five services.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub gateway: gateway::Config,
    pub cards: cards_svc::Config,
    pub rules: rules_svc::Config,
    pub ledger: ledger_svc::Config,
    pub notify: notify_svc::Config,
}

impl SuiteConfig {
    /// The embedded default: one SQLite file per service under `data_dir`, in-process cache.
    pub fn embedded(data_dir: &Path, bind: IpAddr, ports: Ports) -> Self {
        // One process: the five share a token made for this start.
        let token = ServiceToken::generate();
        let settings = |port: u16, name: &str, public: bool| {
            let mut s = ServiceSettings::embedded(port, &data_dir.join(name).to_string_lossy());
            // Only the gateway listens where registers reach it; the internal services
            // listen on loopback whatever `bind` says.
            let ip = if public {
                bind
            } else {
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            };
            s.listen_addr = SocketAddr::new(ip, port);
            s.service_token = Some(token.clone());
            s
        };
        SuiteConfig {
            gateway: gateway::Config {
                service: settings(ports.gateway, "gateway.db", true),
                ..Default::default()
            },
            cards: cards_svc::Config {
                service: settings(ports.cards, "cards.db", false),
                ..Default::default()
            },
            rules: rules_svc::Config {
                service: settings(ports.rules, "rules.db", false),
                ..Default::default()
            },
            ledger: ledger_svc::Config {
                service: settings(ports.ledger, "ledger.db", false),
                ..Default::default()
            },
            notify: notify_svc::Config {
                service: settings(ports.notify, "notify.db", false),
                ..Default::default()
            },
        }
    }
}

impl SuiteConfig {
    /// Puts `token` on all five services (they share one).
    pub fn set_service_token(&mut self, token: &secrecy::SecretString) {
        for service in [
            &mut self.gateway.service,
            &mut self.cards.service,
            &mut self.rules.service,
            &mut self.ledger.service,
            &mut self.notify.service,
        ] {
            service.service_token = Some(token.clone());
        }
    }
}

/// Where each service of a started suite listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub gateway: SocketAddr,
    pub cards: SocketAddr,
    pub rules: SocketAddr,
    pub ledger: SocketAddr,
    pub notify: SocketAddr,
}

impl Addrs {
    /// `(service name, address)` for each of the five, gateway first.
    pub fn all(&self) -> [(&'static str, SocketAddr); 5] {
        [
            ("gateway", self.gateway),
            ("cards", self.cards),
            ("rules", self.rules),
            ("ledger", self.ledger),
            ("notify", self.notify),
        ]
    }
}

/// `addr` with an unspecified IP (0.0.0.0, ::) replaced by loopback, for calling it locally.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

/// The five services, built (databases migrated, ports bound) and ready to run.
pub struct Suite {
    pub gateway: Host,
    pub cards: Host,
    pub rules: Host,
    pub ledger: Host,
    pub notify: Host,
}

impl Suite {
    /// Builds every service; the first failure stops the start.
    pub async fn build(mut config: SuiteConfig) -> anyhow::Result<Self> {
        // ledger-svc and cards-svc relay their outbox events to notify-svc: bind it first.
        let notify = notify_svc::build(config.notify).await?;
        let notify_url = format!("http://{}", loopback(notify.local_addr()));
        if config.ledger.notify_url.is_none() {
            config.ledger.notify_url = Some(notify_url.clone());
        }
        if config.cards.notify_url.is_none() {
            config.cards.notify_url = Some(notify_url);
        }
        // cards-svc calls ledger-svc (customer merges): point it at the ledger just bound.
        let ledger = ledger_svc::build(config.ledger).await?;
        if config.cards.ledger_url.is_none() {
            config.cards.ledger_url = Some(format!("http://{}", loopback(ledger.local_addr())));
        }
        let cards = cards_svc::build(config.cards).await?;
        // rules-svc asks cards-svc for the merchant's tier codes when validating programs.
        if config.rules.cards_url.is_none() {
            config.rules.cards_url = Some(format!("http://{}", loopback(cards.local_addr())));
        }
        let rules = rules_svc::build(config.rules).await?;
        // The gateway composes checkouts from the three just bound.
        let url = |host: &Host| format!("http://{}", loopback(host.local_addr()));
        config.gateway.cards_url = url(&cards);
        config.gateway.rules_url = url(&rules);
        config.gateway.ledger_url = url(&ledger);
        Ok(Suite {
            gateway: gateway::build(config.gateway).await?,
            notify,
            cards,
            rules,
            ledger,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> Addrs {
        Addrs {
            gateway: self.gateway.local_addr(),
            cards: self.cards.local_addr(),
            rules: self.rules.local_addr(),
            ledger: self.ledger.local_addr(),
            notify: self.notify.local_addr(),
        }
    }

    /// Serves all five until `shutdown` is cancelled, then drains each of them.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let run = |host: Host| host.run_until(shutdown.clone().cancelled_owned());
        let (gateway, cards, rules, ledger, notify) = tokio::join!(
            run(self.gateway),
            run(self.cards),
            run(self.rules),
            run(self.ledger),
            run(self.notify),
        );
        gateway?;
        cards?;
        rules?;
        ledger?;
        notify?;
        Ok(())
    }
}
