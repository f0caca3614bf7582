//! `EventService`: intake of the domain events the other services relay from their outboxes.
//! A batch is stored in one statement before it is acknowledged, and events are de-duplicated by
//! id, so a relay may repeat a batch (at-least-once delivery) without effect.

use chrono::Utc;
use kopilka_proto::notify::event_service_server::EventService;
use kopilka_proto::notify::{IngestEventsRequest, IngestEventsResponse};
use kopilka_proto::types::{event::Payload, Event, EventType};
use kopilka_runtime::{status, Db};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::store::{self, EventRow};

/// Most events in one `IngestEvents` call.
pub const MAX_BATCH: usize = 500;

/// The `EventService` implementation.
#[derive(Debug, Clone)]
pub struct EventApi {
    db: Db,
}

impl EventApi {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

/// The event type of a payload; UNSPECIFIED for none (stored and ignored).
pub fn event_type(payload: Option<&Payload>) -> EventType {
    match payload {
        None => EventType::Unspecified,
        Some(Payload::PurchaseConfirmed(_)) => EventType::PurchaseConfirmed,
        Some(Payload::PointsAccrued(_)) => EventType::PointsAccrued,
        Some(Payload::PointsRedeemed(_)) => EventType::PointsRedeemed,
        Some(Payload::CustomerRegistered(_)) => EventType::CustomerRegistered,
        Some(Payload::TierChanged(_)) => EventType::TierChanged,
        Some(Payload::PointsExpiring(_)) => EventType::PointsExpiring,
        Some(Payload::PointsExpired(_)) => EventType::PointsExpired,
        Some(Payload::ReceiptRefunded(_)) => EventType::ReceiptRefunded,
        Some(Payload::ConsentChanged(_)) => EventType::ConsentChanged,
        Some(Payload::CustomersMerged(_)) => EventType::CustomersMerged,
        Some(Payload::CardBlocked(_)) => EventType::CardBlocked,
        Some(Payload::ReviewSubmitted(_)) => EventType::ReviewSubmitted,
        Some(Payload::PointsAdjusted(_)) => EventType::PointsAdjusted,
        Some(Payload::ActionRecorded(_)) => EventType::ActionRecorded,
        Some(Payload::ProfileUpdated(_)) => EventType::ProfileUpdated,
    }
}

/// Field violations of a request, or the rows to store.
fn validate(r: &IngestEventsRequest) -> Result<Vec<EventRow>, Status> {
    let mut v: Vec<(String, String)> = Vec::new();
    let len = r.request_id.chars().count();
    if len == 0 || len > 128 {
        v.push(("request_id".into(), "must be 1 to 128 characters".into()));
    }
    if r.events.is_empty() || r.events.len() > MAX_BATCH {
        v.push((
            "events".into(),
            format!("must hold 1 to {MAX_BATCH} events"),
        ));
    }
    let mut rows = Vec::with_capacity(r.events.len());
    for (i, e) in r.events.iter().enumerate() {
        if uuid::Uuid::parse_str(&e.event_id).is_err() {
            v.push((format!("events[{i}].event_id"), "must be a UUID".into()));
        }
        if e.merchant_id.is_empty() || e.merchant_id.chars().count() > 128 {
            v.push((
                format!("events[{i}].merchant_id"),
                "must be 1 to 128 characters".into(),
            ));
        } else if !r.merchant_id.is_empty() && e.merchant_id != r.merchant_id {
            v.push((
                format!("events[{i}].merchant_id"),
                "must be the request's merchant_id".into(),
            ));
        }
        let occurred_at = match &e.occurred_at {
            None => None,
            Some(t) => match kopilka_runtime::timestamps::from_proto(t) {
                Some(t) => Some(t),
                None => {
                    v.push((
                        format!("events[{i}].occurred_at"),
                        "is not a valid timestamp".into(),
                    ));
                    None
                }
            },
        };
        rows.push(row(e, occurred_at));
    }
    if v.is_empty() {
        Ok(rows)
    } else {
        Err(status::invalid_argument(v))
    }
}

fn row(e: &Event, occurred_at: Option<chrono::DateTime<Utc>>) -> EventRow {
    EventRow {
        merchant_id: e.merchant_id.clone(),
        event_id: e.event_id.clone(),
        event_type: event_type(e.payload.as_ref()) as i32,
        customer_id: e.customer_id.clone(),
        producer: e.producer.clone(),
        occurred_at,
        event: e.encode_to_vec(),
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    async fn ingest_events(
        &self,
        request: Request<IngestEventsRequest>,
    ) -> Result<Response<IngestEventsResponse>, Status> {
        let r = request.into_inner();
        let rows = validate(&r)?;
        let accepted = store::insert_events(&self.db, &rows, Utc::now())
            .await
            .map_err(|e| status::internal(&e))?;
        let accepted = accepted as u32;
        Ok(Response::new(IngestEventsResponse {
            accepted,
            duplicates: rows.len() as u32 - accepted,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, merchant: &str) -> Event {
        Event {
            event_id: id.into(),
            merchant_id: merchant.into(),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_each_bad_field() {
        let ok = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let r = IngestEventsRequest {
            merchant_id: "m1".into(),
            request_id: "r".into(),
            events: vec![event(ok, "m1"), event("nope", "m1"), event(ok, "m2")],
        };
        let status = validate(&r).unwrap_err();
        let fields: Vec<String> = status::field_violations_of(&status)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["events[1].event_id", "events[2].merchant_id"]);
        let empty = IngestEventsRequest::default();
        let fields: Vec<String> = status::field_violations_of(&validate(&empty).unwrap_err())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["request_id", "events"]);
    }
}
