//! The gRPC face of the ledger: each handler converts and calls [`Ledger`]; errors become
//! statuses in one place (`Error` → `Status`).

use kopilka_proto::ledger as pb;
use kopilka_proto::ledger::ledger_service_server::LedgerService;
use tonic::{Request, Response, Status};

use crate::convert::opt_instant;
use crate::error::Error;
use crate::ledger::Ledger;

/// The tonic service.
#[derive(Clone)]
pub struct LedgerApi {
    ledger: Ledger,
}

impl LedgerApi {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

fn reply<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    async fn accrue(
        &self,
        r: Request<pb::AccrueRequest>,
    ) -> Result<Response<pb::AccrueResponse>, Status> {
        reply(self.ledger.accrue_points(r.get_ref()).await)
    }
    async fn redeem(
        &self,
        r: Request<pb::RedeemRequest>,
    ) -> Result<Response<pb::RedeemResponse>, Status> {
        reply(self.ledger.redeem_points(r.get_ref()).await)
    }
    async fn grant_gift(
        &self,
        r: Request<pb::GrantGiftRequest>,
    ) -> Result<Response<pb::GrantGiftResponse>, Status> {
        reply(self.ledger.grant_gift(r.get_ref()).await)
    }
    async fn adjust(
        &self,
        r: Request<pb::AdjustRequest>,
    ) -> Result<Response<pb::AdjustResponse>, Status> {
        reply(self.ledger.adjust_points(r.get_ref()).await)
    }
    async fn reserve(
        &self,
        r: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        reply(self.ledger.reserve_points(r.get_ref()).await)
    }
    async fn commit_hold(
        &self,
        r: Request<pb::CommitHoldRequest>,
    ) -> Result<Response<pb::CommitHoldResponse>, Status> {
        reply(self.ledger.commit(r.get_ref()).await)
    }
    async fn void_hold(
        &self,
        r: Request<pb::VoidHoldRequest>,
    ) -> Result<Response<pb::VoidHoldResponse>, Status> {
        reply(self.ledger.void(r.get_ref()).await)
    }
    async fn get_hold(
        &self,
        r: Request<pb::GetHoldRequest>,
    ) -> Result<Response<pb::GetHoldResponse>, Status> {
        reply(self.ledger.get_hold(r.get_ref()).await)
    }
    async fn record_receipt(
        &self,
        r: Request<pb::RecordReceiptRequest>,
    ) -> Result<Response<pb::RecordReceiptResponse>, Status> {
        reply(self.ledger.record(r.get_ref()).await)
    }
    async fn refund_receipt(
        &self,
        r: Request<pb::RefundReceiptRequest>,
    ) -> Result<Response<pb::RefundReceiptResponse>, Status> {
        reply(self.ledger.refund(r.get_ref()).await)
    }
    async fn get_receipt(
        &self,
        r: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::GetReceiptResponse>, Status> {
        reply(self.ledger.get_receipt(r.get_ref()).await)
    }
    async fn list_receipts(
        &self,
        r: Request<pb::ListReceiptsRequest>,
    ) -> Result<Response<pb::ListReceiptsResponse>, Status> {
        reply(self.ledger.list_receipts(r.get_ref()).await)
    }
    async fn get_balance(
        &self,
        r: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        reply(self.ledger.get_balance(r.get_ref()).await)
    }
    async fn get_account_snapshot(
        &self,
        r: Request<pb::GetAccountSnapshotRequest>,
    ) -> Result<Response<pb::GetAccountSnapshotResponse>, Status> {
        reply(self.ledger.get_snapshot(r.get_ref()).await)
    }
    async fn list_lots(
        &self,
        r: Request<pb::ListLotsRequest>,
    ) -> Result<Response<pb::ListLotsResponse>, Status> {
        reply(self.ledger.list_lots(r.get_ref()).await)
    }
    async fn list_history(
        &self,
        r: Request<pb::ListHistoryRequest>,
    ) -> Result<Response<pb::ListHistoryResponse>, Status> {
        reply(self.ledger.list_history(r.get_ref()).await)
    }
    async fn get_purchase_aggregates(
        &self,
        r: Request<pb::GetPurchaseAggregatesRequest>,
    ) -> Result<Response<pb::GetPurchaseAggregatesResponse>, Status> {
        reply(self.ledger.get_aggregates(r.get_ref()).await)
    }
    async fn list_customer_activity(
        &self,
        r: Request<pb::ListCustomerActivityRequest>,
    ) -> Result<Response<pb::ListCustomerActivityResponse>, Status> {
        reply(self.ledger.list_activity(r.get_ref()).await)
    }
    async fn get_merchant_totals(
        &self,
        r: Request<pb::GetMerchantTotalsRequest>,
    ) -> Result<Response<pb::GetMerchantTotalsResponse>, Status> {
        reply(self.ledger.merchant_totals(r.get_ref()).await)
    }
    async fn verify(
        &self,
        r: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        reply(self.ledger.verify(r.get_ref()).await)
    }
    async fn merge_accounts(
        &self,
        r: Request<pb::MergeAccountsRequest>,
    ) -> Result<Response<pb::MergeAccountsResponse>, Status> {
        reply(self.ledger.merge(r.get_ref()).await)
    }
    async fn process_due_lots(
        &self,
        r: Request<pb::ProcessDueLotsRequest>,
    ) -> Result<Response<pb::ProcessDueLotsResponse>, Status> {
        let r = r.into_inner();
        let as_of = opt_instant(&r.as_of, "as_of").map_err(Status::from)?;
        let merchant = (!r.merchant_id.is_empty()).then_some(r.merchant_id.as_str());
        reply(self.ledger.process_due(merchant, as_of, r.max_items).await)
    }
    async fn get_ledger_settings(
        &self,
        r: Request<pb::GetLedgerSettingsRequest>,
    ) -> Result<Response<pb::GetLedgerSettingsResponse>, Status> {
        reply(
            self.ledger
                .get_settings(&r.get_ref().merchant_id)
                .await
                .map(|s| pb::GetLedgerSettingsResponse { settings: Some(s) }),
        )
    }
    async fn update_ledger_settings(
        &self,
        r: Request<pb::UpdateLedgerSettingsRequest>,
    ) -> Result<Response<pb::UpdateLedgerSettingsResponse>, Status> {
        reply(self.ledger.set_settings(r.get_ref()).await)
    }
}
