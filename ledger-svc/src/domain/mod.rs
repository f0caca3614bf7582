//! The ledger's rules, pure and testable apart from I/O: amounts and their scales, the clock,
//! and the [`book::Book`] that applies movements to one customer's account and lots and writes
//! the journal entries for them.

pub mod amounts;
pub mod book;
pub mod clock;
pub mod periods;
pub mod split;
