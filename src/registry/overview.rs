//! The pool at a glance: how many of each thing there are, and what the queue holds.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub bases: i64,
    pub recipes: i64,
    pub partitions: i64,
    pub eval_sets: i64,
    pub scores: i64,
    pub sweeps: i64,
    pub validations: i64,
    pub searches: i64,
    /// Unit models by state.
    pub unit_models: BTreeMap<String, i64>,
    /// Queued and running jobs by kind: `{kind: {state: n}}`.
    pub queue: BTreeMap<String, BTreeMap<String, i64>>,
}

pub async fn counts(pool: &PgPool) -> Result<Counts, sqlx::Error> {
    let (bases, recipes, partitions, eval_sets, scores, sweeps, validations, searches): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "select (select count(*) from bases), (select count(*) from recipes),
                (select count(*) from partitions), (select count(*) from eval_sets),
                (select count(*) from scores), (select count(*) from sweeps),
                (select count(*) from validations), (select count(*) from searches)",
    )
    .fetch_one(pool)
    .await?;
    let unit_models: Vec<(String, i64)> =
        sqlx::query_as("select state, count(*) from models group by state")
            .fetch_all(pool)
            .await?;
    let active: Vec<(String, String, i64)> = sqlx::query_as(
        "select kind, state, count(*) from jobs where state in ('queued', 'running')
         group by kind, state",
    )
    .fetch_all(pool)
    .await?;
    let mut queue: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (kind, state, n) in active {
        queue.entry(kind).or_default().insert(state, n);
    }
    Ok(Counts {
        bases,
        recipes,
        partitions,
        eval_sets,
        scores,
        sweeps,
        validations,
        searches,
        unit_models: unit_models.into_iter().collect(),
        queue,
    })
}
