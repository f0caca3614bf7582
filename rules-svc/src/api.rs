//! The gRPC face of ProgramService and CatalogService: each handler calls the [`Programs`]
//! method of the same name (mutations there are idempotent by request_id); errors become
//! statuses in one place (`Error` → `Status`). EvaluationService lives in `evaluation_api.rs`.

use kopilka_proto::rules as pb;
use tonic::{Request, Response, Status};

use crate::programs::Programs;

/// The tonic services ProgramService and CatalogService (one value serves both).
#[derive(Clone)]
pub struct ProgramApi(pub Programs);

/// Implements a service whose every RPC is the [`Programs`] method of the same name.
macro_rules! service {
    ($service:path { $($rpc:ident($req:ty) -> $resp:ty;)* }) => {
        #[tonic::async_trait]
        impl $service for ProgramApi {
            $(
                async fn $rpc(&self, r: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.0.$rpc(r.get_ref()).await.map(Response::new).map_err(Status::from)
                }
            )*
        }
    };
}

service!(pb::program_service_server::ProgramService {
    create_draft(pb::CreateDraftRequest) -> pb::CreateDraftResponse;
    update_draft(pb::UpdateDraftRequest) -> pb::UpdateDraftResponse;
    delete_draft(pb::DeleteDraftRequest) -> pb::DeleteDraftResponse;
    validate_program(pb::ValidateProgramRequest) -> pb::ValidateProgramResponse;
    publish_version(pb::PublishVersionRequest) -> pb::PublishVersionResponse;
    activate_version(pb::ActivateVersionRequest) -> pb::ActivateVersionResponse;
    cancel_activation(pb::CancelActivationRequest) -> pb::CancelActivationResponse;
    get_version(pb::GetVersionRequest) -> pb::GetVersionResponse;
    list_versions(pb::ListVersionsRequest) -> pb::ListVersionsResponse;
    get_active_version(pb::GetActiveVersionRequest) -> pb::GetActiveVersionResponse;
});

service!(pb::catalog_service_server::CatalogService {
    upsert_categories(pb::UpsertCategoriesRequest) -> pb::UpsertCategoriesResponse;
    list_categories(pb::ListCategoriesRequest) -> pb::ListCategoriesResponse;
    delete_categories(pb::DeleteCategoriesRequest) -> pb::DeleteCategoriesResponse;
});
