//! What a job kind is. Each kind implements [`Kind`] in its own file (its payload, the key
//! that makes identical work share one job, how many attempts it gets, its work, and what a
//! failure or a cancellation leaves on its target) and is registered by one line in
//! [`super::KINDS`]. The queue stores a kind as text and a payload as JSON; [`Kind::job`] is
//! the only way a job is made, so a kind's name, payload and dedup key cannot drift apart.

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;

use super::context::Context;
use super::{Done, JobError};
use crate::registry::jobs::NewJob;

pub trait Kind: Send + Sync + 'static {
    /// The kind's name in the queue, the API, the command line and the dashboard.
    const NAME: &'static str;
    /// What a job of this kind does, in one line (`worker --kinds` help).
    const ABOUT: &'static str;
    /// Attempts before the job fails for good (an expired lease during which the job saved
    /// nothing counts as one).
    const MAX_ATTEMPTS: i32 = 3;
    /// Whether its work merges resident unit models: the worker keeps its merger (and the
    /// unit models resident in it) between such jobs, and frees it before any other.
    const MERGES: bool = false;

    type Payload: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Names the work: jobs with the same key share one active job.
    fn dedup_key(payload: &Self::Payload) -> String;

    /// Jobs that share their inputs (unit models a worker may hold) name the same affinity;
    /// a worker prefers the affinity of the last job it ran. None by default.
    fn affinity(payload: &Self::Payload) -> Option<String> {
        let _ = payload;
        None
    }

    /// Does the work on a worker.
    fn run(cx: &Context, payload: Self::Payload) -> impl Future<Output = Outcome> + Send;

    /// What a job that failed for good leaves on its target (a model or a base marked
    /// failed, so that asking again queues new work). Nothing by default.
    fn failed(
        db: &mut PgConnection,
        payload: &Self::Payload,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = (db, payload);
        async { Ok(()) }
    }

    /// What a cancelled job (by request, before or while it ran) leaves on its target; as a
    /// failure by default.
    fn cancelled(
        db: &mut PgConnection,
        payload: &Self::Payload,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        Self::failed(db, payload)
    }

    /// The job that does this work.
    fn job(payload: &Self::Payload) -> NewJob {
        NewJob {
            dedup_key: Some(Self::dedup_key(payload)),
            max_attempts: Self::MAX_ATTEMPTS,
            affinity: Self::affinity(payload),
            ..NewJob::new(
                Self::NAME,
                serde_json::to_value(payload).expect("payloads serialise"),
            )
        }
    }
}

/// How a job's work ended.
pub type Outcome = Result<Done, JobError>;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A kind as the worker and the API see it: its name and its hooks over JSON payloads.
pub struct Registration {
    pub name: &'static str,
    pub about: &'static str,
    pub merges: bool,
    run: for<'a> fn(&'a Context, Value) -> Boxed<'a, Outcome>,
    failed: for<'a> fn(&'a mut PgConnection, &'a Value) -> Boxed<'a, Result<(), sqlx::Error>>,
    cancelled: for<'a> fn(&'a mut PgConnection, &'a Value) -> Boxed<'a, Result<(), sqlx::Error>>,
}

impl Registration {
    /// Runs a claimed job; a payload that does not parse fails it for good.
    pub fn run<'a>(&self, cx: &'a Context, payload: Value) -> Boxed<'a, Outcome> {
        (self.run)(cx, payload)
    }

    /// [`Kind::failed`] on a job's stored payload (nothing when it does not parse).
    pub fn failed<'a>(
        &self,
        db: &'a mut PgConnection,
        payload: &'a Value,
    ) -> Boxed<'a, Result<(), sqlx::Error>> {
        (self.failed)(db, payload)
    }

    /// [`Kind::cancelled`] on a job's stored payload (nothing when it does not parse).
    pub fn cancelled<'a>(
        &self,
        db: &'a mut PgConnection,
        payload: &'a Value,
    ) -> Boxed<'a, Result<(), sqlx::Error>> {
        (self.cancelled)(db, payload)
    }
}

/// The registration of kind `K`.
pub const fn register<K: Kind>() -> Registration {
    Registration {
        name: K::NAME,
        about: K::ABOUT,
        merges: K::MERGES,
        run: run::<K>,
        failed: failed::<K>,
        cancelled: cancelled::<K>,
    }
}

fn run<K: Kind>(cx: &Context, payload: Value) -> Boxed<'_, Outcome> {
    Box::pin(async move {
        let payload: K::Payload = serde_json::from_value(payload)
            .map_err(|e| JobError::Fatal(format!("bad {} payload: {e}", K::NAME)))?;
        K::run(cx, payload).await
    })
}

fn failed<'a, K: Kind>(
    db: &'a mut PgConnection,
    payload: &'a Value,
) -> Boxed<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        match K::Payload::deserialize(payload) {
            Ok(payload) => K::failed(db, &payload).await,
            Err(_) => Ok(()),
        }
    })
}

fn cancelled<'a, K: Kind>(
    db: &'a mut PgConnection,
    payload: &'a Value,
) -> Boxed<'a, Result<(), sqlx::Error>> {
    Box::pin(async move {
        match K::Payload::deserialize(payload) {
            Ok(payload) => K::cancelled(db, &payload).await,
            Err(_) => Ok(()),
        }
    })
}
