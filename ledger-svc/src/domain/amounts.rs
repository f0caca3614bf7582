//! Points and money as exact decimals: shared with rules-svc, so they live in the runtime.

pub use kopilka_runtime::decimal::*;
