//! Merging two customers' accounts (a duplicate registration, a card found to be someone
//! else's): everything of the source moves to the target in one transaction.

use chrono::{DateTime, Utc};
use kopilka_proto::ledger as pb;
use kopilka_proto::types::{self, event::Payload};
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::Violations;
use rust_decimal::Decimal;

use crate::domain::book::{Account, AccountState, Book, Entry};
use crate::error::Error;
use crate::ledger::{Ledger, MAX_ID};
use crate::settings::Settings;
use crate::store::LedgerTx;

/// Transaction kind MERGE (`kopilka.ledger.v1.TransactionKind`).
const TX_MERGE: i32 = 11;

impl Ledger {
    pub(crate) async fn merge_accounts(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::MergeAccountsRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::MergeAccountsResponse, Error> {
        let mut v = Violations::new();
        v.id("source_customer_id", &r.source_customer_id, MAX_ID, true);
        v.id("target_customer_id", &r.target_customer_id, MAX_ID, true);
        if r.source_customer_id == r.target_customer_id {
            v.add("target_customer_id", "must differ from source_customer_id");
        }
        v.check()?;
        let (source, target) = (r.source_customer_id.as_str(), r.target_customer_id.as_str());
        let (first, second) = if source < target {
            (source, target)
        } else {
            (target, source)
        };
        tx.lock_account(merchant, first, now).await?;
        tx.lock_account(merchant, second, now).await?;
        match tx.merged_into(merchant, source).await? {
            Some(into) if into == target => {
                let balance = self
                    .read_balance(tx, merchant, target, s, now, chrono::Duration::days(30))
                    .await?;
                return Ok(pb::MergeAccountsResponse {
                    balance: Some(balance),
                    lots_moved: 0,
                    receipts_moved: 0,
                    merged_now: false,
                });
            }
            Some(into) => {
                return Err(Refusal::precondition(
                    "MERGE_CONFLICT",
                    format!("`{source}` was already merged into `{into}`"),
                )
                .with("detail", "source_already_merged")
                .into());
            }
            None => {}
        }
        if tx.merged_into(merchant, target).await?.is_some() {
            return Err(Refusal::precondition(
                "MERGE_CONFLICT",
                format!("`{target}` was itself merged away"),
            )
            .with("detail", "target_merged")
            .into());
        }
        let src = Self::load(tx, merchant, source, now).await?.book;
        let dst = Self::load(tx, merchant, target, now).await?.book;
        // Due activations and expiries of both books are journaled before the move.
        for book in [&src, &dst] {
            if !book.entries().is_empty() {
                Self::save(
                    tx,
                    merchant,
                    book,
                    crate::ledger::tx_kind::EXPIRY,
                    now,
                    now,
                    ("", "", ""),
                    request_id,
                    "before merge",
                )
                .await?;
            }
        }
        let (lots_moved, receipts_moved) = tx.move_customer(merchant, source, target).await?;
        let (a, b) = (&src.account, &dst.account);
        let combined = AccountState {
            customer_id: target.to_owned(),
            available: a.available + b.available,
            pending: a.pending + b.pending,
            held: a.held + b.held,
            lifetime_turnover: a.lifetime_turnover + b.lifetime_turnover,
            purchase_count: a.purchase_count + b.purchase_count,
            first_purchase_at: [a.first_purchase_at, b.first_purchase_at]
                .into_iter()
                .flatten()
                .min(),
            last_purchase_at: [a.last_purchase_at, b.last_purchase_at]
                .into_iter()
                .flatten()
                .max(),
        };
        let lots = tx.open_lots(merchant, target).await?;
        let mut book = Book::new(combined, lots, now);
        let mut entries = Vec::new();
        for (account, amount) in [
            (Account::Available, a.available),
            (Account::Pending, a.pending),
            (Account::Held, a.held),
        ] {
            if amount != Decimal::ZERO {
                entries.push(Entry {
                    customer_id: source.to_owned(),
                    account,
                    amount: -amount,
                    lot_id: String::new(),
                });
                entries.push(Entry {
                    customer_id: target.to_owned(),
                    account,
                    amount,
                    lot_id: String::new(),
                });
            }
        }
        book.push_entries(entries);
        book.settle_all_debt();
        Self::save(
            tx,
            merchant,
            &book,
            TX_MERGE,
            now,
            now,
            ("", "", ""),
            request_id,
            &format!("merged from {source}"),
        )
        .await?;
        let event = types::Event {
            event_id: crate::ledger::new_id(),
            merchant_id: merchant.to_owned(),
            occurred_at: Some(crate::convert::timestamp(now)),
            customer_id: target.to_owned(),
            producer: "ledger-svc".to_owned(),
            correlation_id: request_id.to_owned(),
            payload: Some(Payload::CustomersMerged(types::CustomersMerged {
                surviving_customer_id: target.to_owned(),
                merged_customer_id: source.to_owned(),
            })),
        };
        tx.insert_events(
            merchant,
            &[(
                event.event_id.clone(),
                prost::Message::encode_to_vec(&event),
            )],
            now,
        )
        .await?;
        Ok(pb::MergeAccountsResponse {
            balance: Some(self.balance(&book, s)),
            lots_moved,
            receipts_moved,
            merged_now: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::testing::*;

    fn merge(source: &str, target: &str) -> pb::MergeAccountsRequest {
        pb::MergeAccountsRequest {
            merchant_id: M.into(),
            request_id: rid(),
            source_customer_id: source.into(),
            target_customer_id: target.into(),
        }
    }

    #[tokio::test]
    async fn conflicts_say_which() {
        let (l, _) = ledger().await;
        accrue(&l, M, "c-a", "10").await;
        l.merge(&merge("c-a", "c-b")).await.unwrap();
        let fp = Code::FailedPrecondition;
        check(vec![
            (
                "source merged elsewhere",
                refusal(l.merge(&merge("c-a", "c-c")).await),
                answer(fp, "MERGE_CONFLICT", &[("detail", "source_already_merged")]),
            ),
            (
                "target merged away",
                refusal(l.merge(&merge("c-c", "c-a")).await),
                answer(fp, "MERGE_CONFLICT", &[("detail", "target_merged")]),
            ),
        ]);
    }
}
