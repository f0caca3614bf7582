//! Answers of mutating calls kept by request id (table `gateway_requests`): a retry with the
//! same id and payload gets the first answer; the same id with another payload is
//! FAILED_PRECONDITION IDEMPOTENCY_KEY_REUSED.
//!
//! Concurrent duplicates may both run; what they call downstream is itself idempotent (the
//! request id is passed on, or ids are derived from it), and the first answer stored wins.

use std::future::Future;

use kopilka_runtime::status::Refusal;
use kopilka_runtime::{with_db, Db, Timestamp};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::Result;

/// Stores one answer; a second answer under the same id is ignored (the first one wins).
pub const INSERT_ANSWER: &str =
    "INSERT INTO gateway_requests (merchant_id, request_id, operation, request_hash, response, created_at)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (merchant_id, request_id) DO NOTHING";

/// The longest request id accepted.
pub const MAX_REQUEST_ID: usize = 128;

/// Stored answers.
#[derive(Debug, Clone)]
pub struct Requests {
    db: Db,
}

/// SHA-256 of a message's encoding (prost encodes fields in a fixed order).
pub fn digest(message: &impl Message) -> Vec<u8> {
    Sha256::digest(message.encode_to_vec()).to_vec()
}

/// Checks a request id's shape: 1 to 128 printable ASCII characters.
pub fn check_request_id(field: &str, request_id: &str) -> Result<()> {
    let mut v = kopilka_runtime::validate::Violations::new();
    v.id(field, request_id, MAX_REQUEST_ID, true);
    Ok(v.check()?)
}

impl Requests {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The stored answer for `request_id`, if this operation with this payload ran before.
    pub async fn find<R: Message + Default>(
        &self,
        merchant_id: &str,
        request_id: &str,
        operation: &str,
        request_hash: &[u8],
    ) -> Result<Option<R>> {
        let row: Option<(String, Vec<u8>, Vec<u8>)> = with_db!(&self.db, pool => sqlx::query_as(
            "SELECT operation, request_hash, response FROM gateway_requests
             WHERE merchant_id = $1 AND request_id = $2",
        )
        .bind(merchant_id)
        .bind(request_id)
        .fetch_optional(pool)
        .await)?;
        match row {
            None => Ok(None),
            Some((op, hash, response)) if op == operation && hash == request_hash => {
                Ok(Some(R::decode(response.as_slice())?))
            }
            Some(_) => Err(Refusal::precondition(
                "IDEMPOTENCY_KEY_REUSED",
                "this request_id was used for a different request",
            )
            .with("request_id", request_id)
            .into()),
        }
    }

    /// Stores an encoded answer unless one is stored under the id already; `true` if stored.
    pub async fn save_bytes(
        &self,
        merchant_id: &str,
        request_id: &str,
        operation: &str,
        request_hash: &[u8],
        response: Vec<u8>,
    ) -> Result<bool> {
        let inserted = with_db!(&self.db, pool => sqlx::query(INSERT_ANSWER)
        .bind(merchant_id)
        .bind(request_id)
        .bind(operation)
        .bind(request_hash)
        .bind(response)
        .bind(Timestamp::now())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(inserted == 1)
    }

    /// Stores an answer; when a concurrent duplicate stored one first, returns that one.
    pub async fn save<R: Message + Default>(
        &self,
        merchant_id: &str,
        request_id: &str,
        operation: &str,
        request_hash: &[u8],
        response: R,
    ) -> Result<R> {
        let encoded = response.encode_to_vec();
        if self
            .save_bytes(merchant_id, request_id, operation, request_hash, encoded)
            .await?
        {
            return Ok(response);
        }
        Ok(self
            .find(merchant_id, request_id, operation, request_hash)
            .await?
            .unwrap_or(response))
    }

    /// Runs `run` once per (merchant, request id): a repeat returns the stored answer.
    pub async fn once<Q, R, Fut>(
        &self,
        merchant_id: &str,
        request_id: &str,
        operation: &str,
        request: &Q,
        run: impl FnOnce() -> Fut,
    ) -> Result<R>
    where
        Q: Message,
        R: Message + Default,
        Fut: Future<Output = Result<R>>,
    {
        let hash = digest(request);
        if let Some(answer) = self.find(merchant_id, request_id, operation, &hash).await? {
            return Ok(answer);
        }
        let answer = run().await?;
        self.save(merchant_id, request_id, operation, &hash, answer)
            .await
    }

    /// Deletes answers older than `before`.
    pub async fn prune(&self, before: Timestamp) -> Result<u64> {
        Ok(with_db!(&self.db, pool => sqlx::query(
            "DELETE FROM gateway_requests WHERE created_at < $1",
        )
        .bind(before)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_replayed_refused_for_other_payloads_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/gateway.db", dir.path().display());
        let db = Db::connect(&url, 1, crate::MIGRATIONS).await.unwrap();
        let requests = Requests::new(db);
        let request = prost_types::Duration {
            seconds: 1,
            nanos: 0,
        };
        let hash = digest(&request);
        let ran = requests
            .once("m", "r-1", "op", &request, || async { Ok(request) })
            .await
            .unwrap();
        let replayed: prost_types::Duration = requests
            .once("m", "r-1", "op", &request, || async {
                panic!("a repeat must not run again")
            })
            .await
            .unwrap();
        assert_eq!(ran, replayed);
        let other = requests
            .find::<prost_types::Duration>("m", "r-1", "other", &hash)
            .await
            .unwrap_err();
        assert_eq!(other.reason().as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));
        let crate::error::Error::Refused(refusal) = &other else {
            panic!("{other:?}")
        };
        assert_eq!(refusal.metadata, vec![("request_id", "r-1".to_owned())]);
        // Another merchant's request ids are its own.
        assert_eq!(
            requests
                .find::<prost_types::Duration>("n", "r-1", "op", &hash)
                .await
                .unwrap(),
            None
        );
        let later = Timestamp::from(chrono::Utc::now() + chrono::Duration::seconds(1));
        assert_eq!(requests.prune(later).await.unwrap(), 1);
        assert_eq!(
            requests
                .find::<prost_types::Duration>("m", "r-1", "op", &hash)
                .await
                .unwrap(),
            None
        );
    }
}
