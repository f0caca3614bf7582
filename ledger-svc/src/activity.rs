//! Customer activity for segments, win-back and campaigns (L3, A2): lifetime figures, RFM
//! scores over the last 365 days and filters on them.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use kopilka_proto::ledger as pb;
use kopilka_proto::types::AmountRange;
use kopilka_runtime::validate::Violations;
use rust_decimal::Decimal;

use crate::convert::{self, opt_instant};
use crate::domain::amounts::{self, Sign};
use crate::error::Error;
use crate::in_read_tx;
use crate::ledger::{day_of, Ledger, MAX_ID};
use crate::store::{ActivityRow, LedgerTx};

/// Page size when the request gives none, and the largest.
const DEFAULT_PAGE: u32 = 500;
const MAX_PAGE: u32 = 1000;
/// Most store and customer ids in a filter.
const MAX_FILTER_IDS: usize = 1000;

/// Scores 1..=5 by quintile of `value` among `sorted` (ascending); ties share a score.
fn quintile<T: PartialOrd>(sorted: &[T], value: &T) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = sorted.partition_point(|x| x < value);
    1 + (5 * rank / sorted.len()) as u32
}

/// RFM scores of every customer active in the window.
pub fn rfm(rows: &[ActivityRow]) -> Vec<(String, pb::RfmCell)> {
    let mut days: Vec<i64> = rows.iter().map(|r| r.last_day).collect();
    let mut counts: Vec<i64> = rows.iter().map(|r| r.purchases).collect();
    let mut money: Vec<Decimal> = rows.iter().map(|r| r.turnover).collect();
    days.sort_unstable();
    counts.sort_unstable();
    money.sort_unstable();
    rows.iter()
        .map(|r| {
            (
                r.customer_id.clone(),
                pb::RfmCell {
                    recency: quintile(&days, &r.last_day),
                    frequency: quintile(&counts, &r.purchases),
                    monetary: quintile(&money, &r.turnover),
                },
            )
        })
        .collect()
}

fn in_range(value: Decimal, range: &AmountRange) -> Result<bool, Error> {
    let bound = |s: &str, field: &str| -> Result<Option<Decimal>, Error> {
        if s.is_empty() {
            Ok(None)
        } else {
            amounts::parse(s, 4, Sign::NonNegative)
                .map(Some)
                .map_err(|e| Error::invalid(format!("filter.lifetime_turnover.{field}"), e))
        }
    };
    Ok(
        bound(&range.at_least, "at_least")?.is_none_or(|b| value >= b)
            && bound(&range.above, "above")?.is_none_or(|b| value > b)
            && bound(&range.below, "below")?.is_none_or(|b| value < b)
            && bound(&range.at_most, "at_most")?.is_none_or(|b| value <= b),
    )
}

fn cell_matches(cell: &pb::RfmCell, wanted: &pb::RfmCell) -> bool {
    (wanted.recency == 0 || wanted.recency == cell.recency)
        && (wanted.frequency == 0 || wanted.frequency == cell.frequency)
        && (wanted.monetary == 0 || wanted.monetary == cell.monetary)
}

impl Ledger {
    pub async fn list_activity(
        &self,
        r: &pb::ListCustomerActivityRequest,
    ) -> Result<pb::ListCustomerActivityResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        let f = r.filter.clone().unwrap_or_default();
        v.count("filter.store_ids", f.store_ids.len(), MAX_FILTER_IDS);
        v.count("filter.customer_ids", f.customer_ids.len(), MAX_FILTER_IDS);
        let limit = v.page_size("page_size", r.page_size, DEFAULT_PAGE, MAX_PAGE) as usize;
        let offset: usize = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse().unwrap_or_else(|_| {
                v.page_token_invalid("page_token");
                0
            })
        };
        v.check()?;
        let as_of = opt_instant(&r.as_of, "as_of")?.unwrap_or_else(|| self.now());
        let (last_from, last_to) =
            convert::period_bounds(&f.last_purchase, "filter.last_purchase")?;
        let (bought_from, bought_to) = convert::period_bounds(&f.bought_in, "filter.bought_in")?;
        let year_ago: DateTime<Utc> = as_of - Duration::days(365);
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let s = Self::settings(tx, &r.merchant_id).await?;
            let scores = rfm(&tx.activity(&r.merchant_id, day_of(year_ago)).await?);
            let buyers: Option<HashSet<String>> = if f.bought_product_ids.is_empty() && f.bought_category_ids.is_empty() {
                None
            } else {
                Some(tx.buyers(&r.merchant_id, &f.bought_product_ids, &f.bought_category_ids, bought_from, bought_to).await?.into_iter().collect())
            };
            let at_stores: Option<HashSet<String>> = if f.store_ids.is_empty() {
                None
            } else {
                Some(tx.store_customers(&r.merchant_id, &f.store_ids).await?.into_iter().collect())
            };
            let only: HashSet<&String> = f.customer_ids.iter().collect();
            let mut matched = Vec::new();
            for account in tx.accounts(&r.merchant_id, None).await? {
                if account.purchase_count == 0 && f.min_purchase_count > 0 {
                    continue;
                }
                if !only.is_empty() && !only.contains(&account.customer_id) {
                    continue;
                }
                if at_stores.as_ref().is_some_and(|s| !s.contains(&account.customer_id)) {
                    continue;
                }
                if let Some(b) = &buyers {
                    if !b.contains(&account.customer_id) {
                        continue;
                    }
                }
                if last_from.is_some() || last_to.is_some() {
                    let Some(last) = account.last_purchase_at else { continue };
                    if last_from.is_some_and(|t| last < t) || last_to.is_some_and(|t| last >= t) {
                        continue;
                    }
                }
                if (account.purchase_count.max(0) as u64) < f.min_purchase_count {
                    continue;
                }
                if let Some(range) = &f.lifetime_turnover {
                    if !in_range(account.lifetime_turnover, range)? {
                        continue;
                    }
                }
                let cell = scores.iter().find(|(c, _)| c == &account.customer_id).map(|(_, cell)| *cell).unwrap_or_default();
                if !f.rfm_cells.is_empty() && !f.rfm_cells.iter().any(|w| cell_matches(&cell, w)) {
                    continue;
                }
                matched.push((account, cell));
            }
            let more = matched.len() > offset + limit;
            let mut customers = Vec::new();
            for (account, cell) in matched.into_iter().skip(offset).take(limit) {
                let favourite = tx.favourite_product(&r.merchant_id, &account.customer_id, year_ago, as_of).await?;
                customers.push(pb::CustomerActivity {
                    customer_id: account.customer_id.clone(),
                    first_purchase_at: convert::opt_timestamp(account.first_purchase_at),
                    last_purchase_at: convert::opt_timestamp(account.last_purchase_at),
                    purchase_count: account.purchase_count.max(0) as u64,
                    lifetime_turnover: s.money(account.lifetime_turnover),
                    rfm: Some(cell),
                    favourite_product_id: favourite.unwrap_or_default(),
                    available_points: s.points(account.available),
                });
            }
            Ok(pb::ListCustomerActivityResponse { customers, next_page_token: if more { (offset + limit).to_string() } else { String::new() } })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quintiles_score_one_to_five_and_ties_share() {
        let sorted: Vec<i64> = (1..=10).collect();
        assert_eq!(quintile(&sorted, &1), 1);
        assert_eq!(quintile(&sorted, &10), 5);
        assert_eq!(quintile(&sorted, &5), 3);
        let ties = vec![7, 7, 7, 7];
        assert_eq!(quintile(&ties, &7), 1);
    }
}
