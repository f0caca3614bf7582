//! The Kopilka v1 gRPC contract compiled to Rust. Nobody else runs codegen: every crate takes
//! its messages, clients and servers from here.
//!
//! Modules mirror the proto packages (`kopilka.ledger.v1` → [`kopilka::ledger::v1`]). Messages
//! also implement serde in the proto3 JSON mapping (field names as in the .proto files), which
//! is how programs are written as YAML or JSON.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod kopilka {
    pub mod r#type {
        pub mod v1 {
            tonic::include_proto!("kopilka.r#type.v1");
            include!(concat!(env!("OUT_DIR"), "/kopilka.r#type.v1.serde.rs"));
        }
    }
    pub mod cards {
        pub mod v1 {
            tonic::include_proto!("kopilka.cards.v1");
            include!(concat!(env!("OUT_DIR"), "/kopilka.cards.v1.serde.rs"));
        }
    }
    pub mod rules {
        pub mod v1 {
            tonic::include_proto!("kopilka.rules.v1");
            include!(concat!(env!("OUT_DIR"), "/kopilka.rules.v1.serde.rs"));
        }
    }
    pub mod ledger {
        pub mod v1 {
            tonic::include_proto!("kopilka.ledger.v1");
            include!(concat!(env!("OUT_DIR"), "/kopilka.ledger.v1.serde.rs"));
        }
    }
    pub mod notify {
        pub mod v1 {
            tonic::include_proto!("kopilka.notify.v1");
            include!(concat!(env!("OUT_DIR"), "/kopilka.notify.v1.serde.rs"));
        }
    }
    pub mod gateway {
        pub mod v1 {
            tonic::include_proto!("kopilka.gateway.v1");
            include!(concat!(env!("OUT_DIR"), "/kopilka.gateway.v1.serde.rs"));
        }
    }
}

pub use kopilka::{cards::v1 as cards, gateway::v1 as gateway, ledger::v1 as ledger};
pub use kopilka::{notify::v1 as notify, r#type::v1 as types, rules::v1 as rules};

/// The well-known types as used by the generated code (with serde support).
pub use pbjson_types as wkt;

/// Every Kopilka proto file, encoded, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kopilka_descriptor");
