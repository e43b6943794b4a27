//! Deleting a partition: its rows (and its unit models', whose training is cancelled) in one
//! transaction, then its objects and those of the merged models exported from it.

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::registry::datasets::{self, Dataset, DeleteError, Kind};
use crate::store::{Store, keys};

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
