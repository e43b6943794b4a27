//! Unit models that requests need: queued for training when missing (the request then
//! answers 202 naming their jobs), or refused by name when the caller said not to train or a
//! training failed.

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Reason, Result};
use crate::registry::datasets;
use crate::registry::models::{self, UnitModel};

/// The unit models a request waits for, as its 202 answer shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Training {
    pub training: Vec<Waiting>,
    pub message: String,
}

/// One unit model being trained for a request.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub partition: String,
    pub model: Uuid,
    pub job: Option<Uuid>,
}

/// What a request does when unit models it needs are not ready (`missing`, from
/// `models::not_ready`): nothing when none is missing; with `train`, those neither ready nor
/// training are queued and the answer names every model it waits for and its job; without
/// `train`, or when a model's training failed, a 409 naming them (by `name`).
pub async fn train_missing(
    pool: &PgPool,
    (base, recipe): (Uuid, Uuid),
    missing: &[(Uuid, Option<UnitModel>)],
    name: &(dyn Fn(Uuid) -> String + Sync),
    train: bool,
) -> Result<Option<Training>> {
    if missing.is_empty() {
        return Ok(None);
    }
    if !train {
        return Err(not_ready(
            "models_not_ready",
            "no ready unit model (train=false) for",
            missing,
            name,
        ));
    }
    let partitions: Vec<Uuid> = missing.iter().map(|(p, _)| *p).collect();
    let models = crate::jobs::train::queue_missing(pool, base, recipe, &partitions).await?;
    let failed: Vec<(Uuid, Option<UnitModel>)> = models
        .iter()
        .filter(|m| m.state == "failed")
        .map(|m| (m.partition_id, Some(m.clone())))
        .collect();
    if !failed.is_empty() {
        return Err(not_ready(
            "models_failed",
            "training failed (POST /v1/models to train again) for",
            &failed,
            name,
        ));
    }
    let names: Vec<String> = models.iter().map(|m| name(m.partition_id)).collect();
    Ok(Some(Training {
        training: models
            .iter()
            .map(|m| Waiting {
                partition: name(m.partition_id),
                model: m.id,
                job: m.job_id,
            })
            .collect(),
        message: format!(
            "training the unit models of {}; ask again once their jobs end",
            names.join(", ")
        ),
    }))
}

/// 409 `code` naming the partitions whose unit models are not ready, with each model's
/// state and job in `details`.
fn not_ready(
    code: &'static str,
    what: &str,
    missing: &[(Uuid, Option<UnitModel>)],
    name: &(dyn Fn(Uuid) -> String + Sync),
) -> Error {
    let details: Vec<Value> = missing
        .iter()
        .map(|(p, model)| {
            json!({
                "partition": name(*p),
                "model_state": model.as_ref().map(|m| m.state.clone()),
                "job": model.as_ref().and_then(|m| m.job_id),
            })
        })
        .collect();
    let names: Vec<String> = missing.iter().map(|(p, _)| name(*p)).collect();
    Error::refused(
        Reason::Conflict,
        code,
        format!("{what}: {}", names.join(", ")),
    )
    .with_details(json!(details))
}

/// With `"train": "all"` a new base or recipe queues the unit models of every partition,
/// for the default recipe or base, in the caller's transaction; how many were queued.
pub async fn train_all(
    db: &mut sqlx::PgConnection,
    base: Uuid,
    recipe: Uuid,
) -> Result<usize, sqlx::Error> {
    let partitions: Vec<Uuid> = datasets::all_partitions(&mut *db)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    Ok(
        crate::jobs::train::queue(db, base, recipe, &partitions, false)
            .await?
            .len(),
    )
}

/// Queues (again, for failed ones) the training of the unit models of `partitions` (id,
/// name) that are neither ready nor training; every one of their models afterwards, in
/// the order named, with its partition's name.
pub async fn train(
    pool: &PgPool,
    base: Uuid,
    recipe: Uuid,
    partitions: &[(Uuid, String)],
) -> Result<Vec<(String, UnitModel)>> {
    let ids: Vec<Uuid> = partitions.iter().map(|(id, _)| *id).collect();
    let mut tx = pool.begin().await?;
    crate::jobs::train::queue(&mut tx, base, recipe, &ids, true).await?;
    tx.commit().await?;
    let all = models::for_partitions(pool, base, recipe, &ids).await?;
    Ok(partitions
        .iter()
        .filter_map(|(id, name)| {
            let model = all.iter().find(|m| m.partition_id == *id)?;
            Some((name.clone(), model.clone()))
        })
        .collect())
}

/// What a request that needs unit models created: its result, or nothing yet because the
/// unit models are training first (the request answers 202 with them).
pub enum Created<T> {
    Done(T),
    Training(Training),
}
