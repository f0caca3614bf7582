//! The end-to-end suite: every service through its real gRPC interface, on the embedded SQLite
//! default and on a temporary PostgreSQL + Redis (see `kopilka_tests`). One test binary with a
//! module per area, so a clean build links the whole workspace once instead of once per file.
//!
//! Run one area with `cargo test -p kopilka-tests --test e2e gateway_checkout::`.

mod cards_support;

mod cards_customers;
mod cards_identifiers;
mod cards_tiers;
mod checkout_trust;
mod cli;
mod gateway_admin;
mod gateway_checkout;
mod gateway_customers;
mod gateway_errors;
mod gateway_outages;
mod gateway_support;
mod health;
mod internal_access;
mod ledger_accounts;
mod ledger_api;
mod ledger_concurrency;
mod ledger_model;
mod ledger_pages;
mod money_time;
mod notify_relay;
mod postgres_restart;
mod refunds;
mod rules_evaluation;
mod rules_programs;
mod rules_store;
mod terminal_scope;
