//! Idempotency keys the gateway makes, in namespaces that never meet.
//!
//! A caller chooses its own `request_id`s; the gateway also needs keys of its own (a receipt's
//! booking, a customer's start bonus, a month's tier recalculation). If both kinds shared one
//! space, a caller could pick a `request_id` that *is* one of the gateway's keys and block that
//! operation forever (a Reserve with `request_id` `book:R42` made receipt R42 impossible to
//! confirm). So:
//!
//! - downstream (cards, rules, ledger) every key is `gw:c:<digest>` when it comes from a
//!   caller's request id, and `gw:d:<digest>` when the gateway derives it from business keys.
//!   The digest is SHA-256 over the length-prefixed parts, so no choice of parts in one
//!   namespace produces another's key, and every key fits the services' 128-character limit;
//! - in the gateway's own `gateway_requests`, caller ids are stored as sent (printable ASCII,
//!   no spaces: `Violations::id`) and derived keys contain a space ([`local`]).

use sha2::{Digest, Sha256};

fn key(namespace: char, purpose: &str, parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in std::iter::once(purpose).chain(parts.iter().copied()) {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    format!("gw:{namespace}:{}", hex::encode(hash.finalize()))
}

/// The downstream key of one step (`purpose`) of the caller's call `request_id` (with more
/// `parts` when the step repeats, e.g. one per card): the same on every retry of that call.
pub fn from_caller(purpose: &str, request_id: &str, parts: &[&str]) -> String {
    let mut all = Vec::with_capacity(parts.len() + 1);
    all.push(request_id);
    all.extend_from_slice(parts);
    key('c', purpose, &all)
}

/// A downstream key the gateway derives from business keys alone (a receipt id, a customer and
/// a grant key, a period and a customer): no caller's request id can produce it.
pub fn derived(purpose: &str, parts: &[&str]) -> String {
    key('d', purpose, parts)
}

/// A key in the gateway's own answer store (`gateway_requests`) that no caller's request id
/// can be: caller ids are printable ASCII without spaces, this one has one.
pub fn local(purpose: &str, id: &str) -> String {
    format!("{purpose} {id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_and_derived_keys_never_meet() {
        // The collision the review found: a caller's `book:R42` against receipt R42's booking.
        assert_ne!(
            from_caller("reserve", "book:R42", &[]),
            derived("book", &["R42"])
        );
        assert_ne!(from_caller("book", "R42", &[]), derived("book", &["R42"]));
        // Parts are length-prefixed: ("a:b", "c") is not ("a", "b:c").
        assert_ne!(
            from_caller("x", "a:b", &["c"]),
            from_caller("x", "a", &["b:c"])
        );
        assert_ne!(derived("ab", &["c"]), derived("a", &["bc"]));
        assert_eq!(
            derived("book", &["R42"]),
            derived("book", &["R42"]),
            "stable across retries"
        );
        assert!(from_caller("reserve", "r", &[]).starts_with("gw:c:"));
        assert!(derived("book", &["R42"]).starts_with("gw:d:"));
    }

    #[test]
    fn keys_fit_a_downstream_request_id() {
        let long = "x".repeat(128);
        for id in [
            from_caller("register-card", &long, &["12"]),
            derived("gift", &[&long, &long]),
        ] {
            assert_eq!(id.len(), 5 + 64);
        }
    }

    #[test]
    fn local_keys_are_not_caller_ids() {
        let key = local("receipt", "R42");
        assert_eq!(key, "receipt R42");
        let mut v = kopilka_runtime::validate::Violations::new();
        v.id("request_id", &key, 128, true);
        assert!(!v.is_empty());
    }
}
