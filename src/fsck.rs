//! The registry and the object store checked against each other (`mixpool fsck`,
//! `GET /v1/admin/fsck`).
//! Every row's objects exist with their recorded sha256 (a dataset read in place: each of its
//! objects, so a changed one is reported); every object under the pool's own prefixes belongs
//! to a row or to work in progress (other objects are its users' corpora, never orphans);
//! ready unit models have weights; no running job has an expired lease.
//! `--repair` removes orphaned objects and returns expired jobs to the queue; a missing or
//! corrupt object is reported, never "repaired" away.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use sqlx::PgPool;

use crate::engine::checkpoint::{FISHER_FILE, WEIGHTS_FILE};
use crate::registry::fsck::{self as registry, Datasets, Trained};
use crate::registry::jobs;
use crate::store::{Store, keys};

/// A staged upload, or a stored partition or eval set without its row, younger than this may
/// belong to an upload still in flight (its row is written after its object): left alone.
pub const IN_FLIGHT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A row names an object the store does not have.
    Missing,
    /// The object's sha256 is not the one recorded.
    Corrupt,
    /// An object no row or running job owns.
    Orphan,
    /// A unit model or validation marked ready without weights.
    NoWeights,
    /// A running job whose worker stopped renewing its lease.
    ExpiredLease,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: Kind,
    /// The object's key or the job's id.
    pub subject: String,
    pub detail: String,
    pub repaired: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub objects: usize,
    pub bytes: u64,
    /// Objects without a row left alone as young enough to belong to an upload in flight.
    pub in_flight: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    /// Problems that are still there after the run.
    pub fn unresolved(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }

    fn found(&mut self, kind: Kind, subject: impl Into<String>, detail: impl Into<String>) {
        self.problems.push(Problem {
            kind,
            subject: subject.into(),
            detail: detail.into(),
            repaired: false,
        });
    }
}

/// An object a row expects: its recorded sha256 (none for caches that may be remade) and
/// what owns it.
struct Expected {
    sha256: Option<String>,
    owner: String,
}

/// Checks the pool; with `repair`, removes orphans and requeues expired jobs. An upload's
/// object without its row younger than `in_flight` ([`IN_FLIGHT`] unless the caller knows
/// that no upload is in flight) is counted, not reported.
pub async fn check(
    pool: &PgPool,
    store: &Store,
    repair: bool,
    in_flight: Duration,
) -> Result<Report> {
    let mut report = Report::default();
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut expect = |key: String, sha256: Option<String>, owner: String| {
        expected.insert(key, Expected { sha256, owner });
    };

    for (table, noun, key_of) in [
        (
            Datasets::Partitions,
            "partitions",
            keys::partition as fn(&str) -> String,
        ),
        (Datasets::EvalSets, "eval_sets", keys::eval_set),
    ] {
        for (name, sha, object_sha, sources) in registry::datasets(pool, table).await? {
            match sources {
                None => expect(key_of(&sha), Some(object_sha), format!("{noun} {name:?}")),
                // Read in place: each object must still be what it was when registered.
                Some(sources) => {
                    for object in &sources.objects {
                        expect(
                            object.key.clone(),
                            Some(object.sha256.clone()),
                            format!("{noun} {name:?} (read in place)"),
                        );
                    }
                }
            }
        }
    }
    for (id, name, weights, files) in &registry::bases(pool).await? {
        if let Some(sha) = weights {
            expect(
                keys::base(id, WEIGHTS_FILE),
                Some(sha.clone()),
                format!("base {name:?}"),
            );
        }
        for (file, sha) in files.iter() {
            expect(
                keys::base(id, file),
                Some(sha.clone()),
                format!("base {name:?}"),
            );
        }
    }
    // Unit models and validations keep their weights under models/<id>/.
    for (table, what) in [
        (Trained::UnitModels, "unit model"),
        (Trained::Validations, "validation"),
    ] {
        for (id, weights) in registry::ready_weights(pool, table).await? {
            match weights {
                Some(sha) => expect(
                    keys::model(&id, WEIGHTS_FILE),
                    Some(sha),
                    format!("{what} {id}"),
                ),
                None => report.found(
                    Kind::NoWeights,
                    format!("{what} {id}"),
                    "ready without weights",
                ),
            }
        }
    }
    // Beside a unit model's weights: its Fisher estimate, and its per-token NLLs on each
    // eval set an ensemble scored.
    for (model, sha) in registry::fisher_estimates(pool).await? {
        expect(
            keys::model(&model, FISHER_FILE),
            Some(sha),
            format!("the Fisher estimate of unit model {model}"),
        );
    }
    for (model, object, sha) in registry::logprobs(pool).await? {
        expect(
            object,
            Some(sha),
            format!("per-token NLLs of unit model {model}"),
        );
    }
    // Exports are a cache (a removed one is merged again): owned, not required; an export
    // that merged a deleted partition is owned by nothing.
    let exports = registry::live_exports(pool).await?;
    let mut cached: HashSet<String> = HashSet::new();
    for (job, object, sha) in exports {
        if let (Some(object), Some(sha)) = (object, sha) {
            cached.insert(object.clone());
            expect(object, Some(sha), format!("export job {job}"));
        }
    }
    // Work in progress: the train-state mirrors of jobs that will still run.
    let in_progress = registry::train_states_in_use(pool).await?;

    for meta in store.list_meta("").await? {
        report.objects += 1;
        report.bytes += meta.size;
        let key = meta.key;
        if let Some(want) = expected.remove(&key) {
            let Some(sha) = want.sha256 else { continue };
            match store.sha256(&key).await? {
                Some(actual) if actual == sha => {}
                Some(actual) => report.found(
                    Kind::Corrupt,
                    key,
                    format!("{}: sha256 {actual}, recorded {sha}", want.owner),
                ),
                None => report.found(Kind::Missing, key, want.owner),
            }
            continue;
        }
        // Objects outside the pool's own prefixes are its users' (corpora to read in place):
        // never orphans.
        if !crate::service::sources::is_own(&key) {
            continue;
        }
        if in_progress.iter().any(|p| key.starts_with(p)) {
            continue;
        }
        let uploading = ["staging/", "partitions/", "evalsets/"]
            .iter()
            .any(|p| key.starts_with(p))
            && meta.age.is_none_or(|age| age < in_flight);
        if uploading {
            report.in_flight += 1;
            continue;
        }
        let detail = if key.starts_with("staging/") {
            "a staged upload of a request that never finished"
        } else if key.contains("/train_state/") {
            "the train state of a job that will not run again"
        } else {
            "no row owns it"
        };
        let repaired = repair && store.delete(&key).await.is_ok();
        report.problems.push(Problem {
            kind: Kind::Orphan,
            subject: key,
            detail: detail.into(),
            repaired,
        });
    }
    for (key, want) in expected {
        if !cached.contains(&key) {
            report.found(Kind::Missing, key, want.owner);
        }
    }

    let expired = registry::expired_leases(pool).await?;
    let requeued = match (repair, expired.is_empty()) {
        (true, false) => jobs::requeue_expired(pool).await? > 0,
        _ => false,
    };
    for (id, kind, owner) in expired {
        report.problems.push(Problem {
            kind: Kind::ExpiredLease,
            subject: id.to_string(),
            detail: format!(
                "{kind} job of {} whose lease expired",
                owner.unwrap_or_default()
            ),
            repaired: requeued,
        });
    }
    Ok(report)
}
