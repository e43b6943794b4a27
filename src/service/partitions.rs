//! A partition uploaded: its unit model queued. Deleting one: its rows (and its unit models', whose training is cancelled) in one
//! transaction, then its objects and those of the merged models exported from it.

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::registry::datasets::{self, Dataset, DeleteError, Kind};
use crate::registry::models::UnitModel;
use crate::registry::{bases, recipes};
use crate::store::{Store, keys};

/// After an upload of `partition` (`new` when its bytes were not stored before): its `train`
/// flag recorded, and with it the unit model for the newest ready base and recipe queued
/// (none yet without both: a score, `POST /v1/models` or the healing pass queues it later).
pub async fn uploaded(
    pool: &PgPool,
    partition: &Dataset,
    new: bool,
    train: bool,
) -> Result<Vec<UnitModel>> {
    // The healing pass queues only wanted unit models: a new partition is stored with the
    // flag, one uploaded again takes the new one.
    if !new {
        datasets::set_train(pool, partition.id, train).await?;
    }
    if !train {
        return Ok(Vec::new());
    }
    // A database that fails here fails the request, which the client retries: the same
    // bytes are the same partition, and its model is queued then.
    let base = bases::latest_ready(pool).await?;
    let recipe = recipes::latest(pool).await?;
    let (Some(base), Some(recipe)) = (base, recipe) else {
        return Ok(Vec::new());
    };
    let mut tx = pool.begin().await?;
    let model = crate::jobs::train::ensure(&mut tx, base.id, recipe.id, partition.id)
        .await?
        .into_inner();
    tx.commit().await?;
    Ok(vec![model])
}

/// Removes the partition named `key` when no score needs it (409 `partition_in_use`
/// otherwise): the partition and the ids of its unit models, deleted with it.
pub async fn delete(pool: &PgPool, store: &Store, key: &str) -> Result<(Dataset, Vec<Uuid>)> {
    let partition = datasets::find(pool, Kind::Partition, key)
        .await?
        .ok_or_else(|| Error::not_found(format!("partition {key:?}")))?;
    let mut tx = pool.begin().await?;
    let models = datasets::delete_partition(&mut tx, &partition)
        .await
        .map_err(|e| match e {
            e @ DeleteError::InUse { .. } => Error::conflict("partition_in_use", e.to_string()),
            DeleteError::Database(e) => e.into(),
        })?;
    // Merged models exported from this partition's unit model can never be asked for again.
    let exports = crate::registry::jobs::exports_of(&mut tx, partition.id).await?;
    tx.commit().await?;
    // The rows are gone; their objects follow (an object left by a failure here is unused,
    // and `mixpool fsck --repair` removes it).
    let mut objects = vec![keys::partition(&partition.sha256)];
    objects.extend(exports);
    for model in &models {
        objects.extend(store.list(&keys::model(model, "")).await?);
    }
    for object in objects {
        if let Err(e) = store.delete(&object).await {
            tracing::warn!("deleting {object}: {e}");
        }
    }
    Ok((partition, models))
}
