//! Job kinds, one file each, registered in [`KINDS`]: the worker runs a claimed job through
//! its kind's registration, and every list of kind names (the worker's `--kinds`, the API's
//! `kind` filter and its document, the dashboard's filter, the database's check) is this
//! one. Adding a kind is a file that implements [`kind::Kind`] and one line below.

pub mod context;
mod ensemble;
pub mod export;
pub mod kind;
mod merger;
pub mod mirror;
pub mod pretrain;
pub mod register;
pub mod score;
pub mod search;
pub mod sweep;
pub mod train;
mod training;
pub mod validate;

pub use export::{Export, ExportJob};
pub use kind::{Kind, Registration};
pub use merger::KeptMerger;
pub use pretrain::{Pretrain, PretrainJob};
pub use register::{Register, RegisterJob};
pub use score::{Score, ScoreJob};
pub use search::{Search, SearchJob};
pub use sweep::{Sweep, SweepJob};
pub use train::{Train, TrainJob};
pub use validate::{Validate, ValidateJob};

/// Every job kind.
pub static KINDS: &[Registration] = &[
    kind::register::<Pretrain>(),
    kind::register::<Train>(),
    kind::register::<Score>(),
    kind::register::<Sweep>(),
    kind::register::<Validate>(),
    kind::register::<Export>(),
    kind::register::<Search>(),
    kind::register::<Register>(),
];

/// The kind registered as `name`.
pub fn find(name: &str) -> Option<&'static Registration> {
    KINDS.iter().find(|k| k.name == name)
}

/// Every kind's name, in registration order.
pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

/// The kind named `name`, or an error that lists the kinds there are.
pub fn parse_kind(name: &str) -> Result<&'static str, String> {
    find(name)
        .map(|k| k.name)
        .ok_or_else(|| format!("unknown job kind {name:?}: use {}", names().join(", ")))
}

/// Whether trying the job again can help.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The database or the store failed: another attempt may succeed.
    #[error("{0}")]
    Retryable(String),
    /// The job's inputs are wrong (bad data, bad settings, a missing row): it will fail again.
    #[error("{0}")]
    Fatal(String),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Retryable(format!("database: {e}"))
    }
}

impl From<crate::sources::SourceError> for JobError {
    fn from(e: crate::sources::SourceError) -> Self {
        match e {
            crate::sources::SourceError::Store(e) => e.into(),
            e => JobError::Fatal(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for JobError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Checksum { .. } => JobError::Fatal(e.to_string()),
            e => JobError::Retryable(e.to_string()),
        }
    }
}

/// How a job that did not fail ended.
pub enum Done {
    Succeeded,
    /// Stopped on request (cancel, or the worker shutting down) before it finished.
    Cancelled,
    /// Another worker holds the job now: nothing of ours is recorded.
    LeaseLost,
}

/// The ready unit models of `partitions` for a base and recipe, in the partitions' order; a
/// partition without one fails the job for good.
pub(crate) async fn ready_units(
    pool: &sqlx::PgPool,
    base: uuid::Uuid,
    recipe: uuid::Uuid,
    partitions: &[uuid::Uuid],
) -> Result<Vec<crate::registry::models::UnitModel>, JobError> {
    let units = crate::registry::models::for_partitions(pool, base, recipe, partitions).await?;
    partitions
        .iter()
        .map(|p| {
            units
                .iter()
                .find(|u| u.partition_id == *p && u.state == "ready")
                .cloned()
                .ok_or_else(|| JobError::Fatal(format!("partition {p} has no ready unit model")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_is_found_by_its_name_once_and_unknown_ones_are_named() {
        for name in super::names() {
            assert_eq!(super::parse_kind(name), Ok(name));
            assert_eq!(super::names().iter().filter(|n| **n == name).count(), 1);
        }
        let err = super::parse_kind("merge").unwrap_err();
        assert!(err.contains("\"merge\"") && err.contains("sweep"), "{err}");
    }
}
