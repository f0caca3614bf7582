//! The gRPC face of cards-svc: each handler calls [`Cards`]; errors become statuses in one place
//! (`Error` → `Status`). Mutations run through [`Cards::mutate`] (idempotent by request_id).

use kopilka_proto::cards as pb;
use tonic::{Request, Response, Status};

use crate::cards::{Cards, Command};
use crate::error::Error;

/// The tonic services (one value serves all six).
#[derive(Clone)]
pub struct CardsApi(pub Cards);

fn reply<T>(result: Result<T, Error>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// Implements a service: `call`s go to a method of [`Cards`], `mutate`s through
/// [`Cards::mutate`] with their [`Command`].
macro_rules! service {
    ($service:path {
        $(call $call:ident($creq:ty) -> $cresp:ty => $method:ident;)*
        $(mutate $mutate:ident($mreq:ty) -> $mresp:ty => $command:ident;)*
    }) => {
        #[tonic::async_trait]
        impl $service for CardsApi {
            $(
                async fn $call(&self, r: Request<$creq>) -> Result<Response<$cresp>, Status> {
                    reply(self.0.$method(r.get_ref()).await)
                }
            )*
            $(
                async fn $mutate(&self, r: Request<$mreq>) -> Result<Response<$mresp>, Status> {
                    let r = r.get_ref();
                    reply(self.0.mutate(&r.merchant_id, &r.request_id, r, Command::$command(r)).await)
                }
            )*
        }
    };
}

service!(pb::customer_service_server::CustomerService {
    call get_customer(pb::GetCustomerRequest) -> pb::GetCustomerResponse => get_customer;
    call list_customers(pb::ListCustomersRequest) -> pb::ListCustomersResponse => list_customers;
    call merge_customers(pb::MergeCustomersRequest) -> pb::MergeCustomersResponse => merge;
    mutate create_customer(pb::CreateCustomerRequest) -> pb::CreateCustomerResponse => CreateCustomer;
    mutate update_customer(pb::UpdateCustomerRequest) -> pb::UpdateCustomerResponse => UpdateCustomer;
    mutate set_consent(pb::SetConsentRequest) -> pb::SetConsentResponse => SetConsent;
});

service!(pb::identifier_service_server::IdentifierService {
    call lookup_customer(pb::LookupCustomerRequest) -> pb::LookupCustomerResponse => lookup_customer;
    call parse_identifier(pb::ParseIdentifierRequest) -> pb::ParseIdentifierResponse => parse_identifier;
    call list_identifiers(pb::ListIdentifiersRequest) -> pb::ListIdentifiersResponse => list_identifiers;
    mutate add_identifier(pb::AddIdentifierRequest) -> pb::AddIdentifierResponse => AddIdentifier;
    mutate block_identifier(pb::BlockIdentifierRequest) -> pb::BlockIdentifierResponse => BlockIdentifier;
    mutate unblock_identifier(pb::UnblockIdentifierRequest) -> pb::UnblockIdentifierResponse => UnblockIdentifier;
    mutate replace_card(pb::ReplaceCardRequest) -> pb::ReplaceCardResponse => ReplaceCard;
});

service!(pb::tier_service_server::TierService {
    call get_tier(pb::GetTierRequest) -> pb::GetTierResponse => get_tier;
    call list_tiers(pb::ListTiersRequest) -> pb::ListTiersResponse => list_tiers;
    call get_customer_tier(pb::GetCustomerTierRequest) -> pb::GetCustomerTierResponse => get_customer_tier;
    call get_tier_history(pb::GetTierHistoryRequest) -> pb::GetTierHistoryResponse => tier_history;
    mutate upsert_tier(pb::UpsertTierRequest) -> pb::UpsertTierResponse => UpsertTier;
    mutate delete_tier(pb::DeleteTierRequest) -> pb::DeleteTierResponse => DeleteTier;
    mutate assign_tier(pb::AssignTierRequest) -> pb::AssignTierResponse => AssignTier;
});

service!(pb::referral_service_server::ReferralService {
    call get_referral_chain(pb::GetReferralChainRequest) -> pb::GetReferralChainResponse => get_referral_chain;
    call list_referrals(pb::ListReferralsRequest) -> pb::ListReferralsResponse => list_referrals;
    mutate set_referrer(pb::SetReferrerRequest) -> pb::SetReferrerResponse => SetReferrer;
});

service!(pb::registration_service_server::RegistrationService {
    call list_registration_links(pb::ListRegistrationLinksRequest) -> pb::ListRegistrationLinksResponse => list_links;
    call resolve_registration_token(pb::ResolveRegistrationTokenRequest) -> pb::ResolveRegistrationTokenResponse => resolve_token;
    call self_register(pb::SelfRegisterRequest) -> pb::SelfRegisterResponse => self_register_call;
    mutate create_registration_link(pb::CreateRegistrationLinkRequest) -> pb::CreateRegistrationLinkResponse => CreateLink;
    mutate revoke_registration_link(pb::RevokeRegistrationLinkRequest) -> pb::RevokeRegistrationLinkResponse => RevokeLink;
});

service!(pb::cards_settings_service_server::CardsSettingsService {
    call get_cards_settings(pb::GetCardsSettingsRequest) -> pb::GetCardsSettingsResponse => get_settings;
    mutate update_cards_settings(pb::UpdateCardsSettingsRequest) -> pb::UpdateCardsSettingsResponse => UpdateSettings;
});
