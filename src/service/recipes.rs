//! Recipes: how unit models are trained. Settings left out take the unit-model defaults;
//! equal settings under the same name are the existing recipe.

use serde_json::Value;
use sqlx::PgPool;

use crate::engine::train::TrainConfig;
use crate::error::{Error, Result};
use crate::registry::{Created, recipes};
use crate::service::{resolve, units};

/// Creates (or finds, with equal settings) the recipe that `fields` describe: `name`, any
/// training settings, and `train: "all"` to queue every partition's unit model for the
/// newest base with it (how many were queued).
pub async fn create(
    pool: &PgPool,
    mut fields: serde_json::Map<String, Value>,
) -> Result<(Created<recipes::Recipe>, Option<usize>)> {
    let train_all = match fields.remove("train") {
        None => false,
        Some(Value::String(all)) if all == "all" => true,
        Some(other) => {
            return Err(Error::invalid(
                "invalid_body",
                format!("train is \"all\" or absent, not {other}"),
            ));
        }
    };
    let base = match train_all {
        true => Some(resolve::base(pool, None).await?),
        false => None,
    };
    let name = match fields.remove("name") {
        Some(Value::String(name)) => name,
        _ => {
            return Err(Error::invalid(
                "invalid_body",
                "a recipe needs a \"name\" string",
            ));
        }
    };
    crate::ingest::check_name(&name).map_err(|e| Error::invalid("invalid_name", e.to_string()))?;
    let config: TrainConfig = serde_json::from_value(Value::Object(fields))
        .map_err(|e| Error::invalid("invalid_body", e.to_string()))?;
    config
        .validate()
        .map_err(|e| Error::unprocessable("invalid_recipe", e))?;
    let mut tx = pool.begin().await?;
    let created = recipes::insert(&mut tx, &name, &config)
        .await
        .map_err(super::bases::name_taken)?;
    let training = match &base {
        Some(base) => {
            let recipe = match &created {
                Created::New(r) | Created::Existing(r) => r.id,
            };
            Some(units::train_all(&mut tx, base.id, recipe).await?)
        }
        None => None,
    };
    tx.commit().await?;
    Ok((created, training))
}
