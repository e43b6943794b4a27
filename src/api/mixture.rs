//! A mixture as a request names it (`partitions=a,b&weights=..&weighting=..&base=..`),
//! resolved against the registry once: rows, not names.

use super::{ApiError, AppState, resolve_base, resolve_recipe};
use crate::mixture::Weighting;
use crate::registry::datasets::{self, Dataset, Kind};
use crate::registry::{bases, recipes};

/// A mixture as a request names it, resolved: base, recipe, partitions and weighting.
pub(super) struct MixtureSpec {
    pub base: bases::Base,
    pub recipe: recipes::Recipe,
    pub partitions: Vec<Dataset>,
    pub weights: Option<Vec<f64>>,
    pub weighting: Weighting,
}

/// Resolves the names in `partitions=a,b&weights=..&weighting=..&base=..&recipe=..`.
pub(super) async fn resolve_mixture(
    state: &AppState,
    partitions: &str,
    weights: Option<&str>,
    weighting: Option<&str>,
    base: Option<&str>,
    recipe: Option<&str>,
) -> Result<MixtureSpec, ApiError> {
    let (base_name, recipe_name) = state.scores.names(&state.pool, base, recipe).await?;
    let base = resolve_base(&state.pool, Some(&base_name)).await?;
    let recipe = resolve_recipe(&state.pool, Some(&recipe_name)).await?;
    let mut rows: Vec<Dataset> = Vec::new();
    for key in partitions.split(',').map(str::trim) {
        if key.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_partitions",
                "partitions is a comma-separated list of names or ids",
            ));
        }
        let p = datasets::find(&state.pool, Kind::Partition, key)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("partition {key:?}")))?;
        rows.push(p);
    }
    let weights = match weights {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|w| w.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_weights",
                        format!("weights {list:?} are not numbers"),
                    )
                })?,
        ),
    };
    let weighting = match weighting {
        None => None,
        Some(name) => Some(
            Weighting::parse(name).map_err(|e| ApiError::bad_request("invalid_weighting", e))?,
        ),
    };
    let weighting = match (weighting, &weights) {
        (None, None) => Weighting::Uniform,
        (None, Some(_)) => Weighting::Explicit,
        (Some(weighting), None) => weighting,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_weights",
                "give either weights or a weighting, not both",
            ));
        }
    };
    Ok(MixtureSpec {
        base,
        recipe,
        partitions: rows,
        weights,
        weighting,
    })
}
