//! Partitions (training data) and evaluation sets: immutable, content-addressed text.
//! The same bytes uploaded twice are one row; a name already used for other bytes is refused.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Created, RegistryError};

/// `select … where <condition>` for a kind; evaluation sets read with the partition-only
/// columns empty, so both decode as a [`Dataset`].
macro_rules! select {
    ($kind:expr, $condition:literal) => {
        match $kind {
            Kind::Partition => concat!("select * from partitions where ", $condition),
            Kind::EvalSet => concat!(
                "select *, null::text as domain, '{}'::text[] as tags from eval_sets where ",
                $condition
            ),
        }
    };
}

/// Which table: the two share their shape and rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Partition,
    EvalSet,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::EvalSet => "eval set",
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Dataset {
    pub id: Uuid,
    pub name: String,
    /// Partitions only.
    #[sqlx(default)]
    pub domain: Option<String>,
    #[sqlx(default)]
    pub tags: Vec<String>,
    pub sha256: String,
    pub object_sha256: String,
    pub bytes: i64,
    /// Documents, or a choices set's questions.
    pub documents: i64,
    /// Eval sets of multiple-choice questions only: the record shape the upload was written
    /// in (`native`, `lm_eval_harness`, `arc`, `hellaswag`, `piqa`); held-out text has none.
    #[sqlx(default)]
    pub shape: Option<String>,
    /// Read in place from objects of the store (none for uploads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<sqlx::types::Json<crate::sources::Sources>>,
    pub created_at: DateTime<Utc>,
}

impl Dataset {
    /// Whether it is an eval set of multiple-choice questions.
    pub fn is_choices(&self) -> bool {
        self.shape.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct NewDataset {
    pub name: String,
    pub domain: Option<String>,
    pub tags: Vec<String>,
    /// Of the normalised JSONL: the dataset's identity.
    pub sha256: String,
    /// Of the stored object.
    pub object_sha256: String,
    pub bytes: i64,
    pub documents: i64,
    /// Choices sets only: the shape their records were read in.
    pub shape: Option<String>,
    /// Read in place from these objects (then there is no object of its own).
    pub sources: Option<crate::sources::Sources>,
    /// Partitions only: whether its unit models are wanted (the healing pass queues only
    /// those), set with the row so that no pass sees it otherwise.
    pub train: bool,
}

/// Inserts a dataset whose object is already stored. Identical content returns the existing
/// row; a name held by different content is `NameTaken`.
pub async fn insert(
    db: &mut PgConnection,
    kind: Kind,
    new: &NewDataset,
) -> Result<Created<Dataset>, RegistryError> {
    let sql = match kind {
        Kind::Partition => {
            "insert into partitions (id, name, domain, tags, sha256, object_sha256, bytes, documents, train, sources)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) on conflict do nothing returning *"
        }
        Kind::EvalSet => {
            "insert into eval_sets (id, name, sha256, object_sha256, bytes, documents, sources, shape)
             values ($1, $2, $5, $6, $7, $8, $10, $11) on conflict do nothing returning *, null::text as domain, '{}'::text[] as tags"
        }
    };
    let query = sqlx::query_as(sql)
        .bind(Uuid::new_v4())
        .bind(&new.name)
        .bind(&new.domain)
        .bind(&new.tags)
        .bind(&new.sha256)
        .bind(&new.object_sha256)
        .bind(new.bytes)
        .bind(new.documents)
        .bind(new.train)
        .bind(new.sources.clone().map(sqlx::types::Json));
    let query = match kind {
        Kind::Partition => query,
        Kind::EvalSet => query.bind(&new.shape),
    };
    let inserted: Option<Dataset> = query.fetch_optional(&mut *db).await?;
    if let Some(row) = inserted {
        return Ok(Created::New(row));
    }
    let same: Option<Dataset> = sqlx::query_as(select!(kind, "sha256 = $1"))
        .bind(&new.sha256)
        .fetch_optional(&mut *db)
        .await?;
    match same {
        Some(row) => Ok(Created::Existing(row)),
        None => Err(RegistryError::NameTaken {
            kind: kind.noun(),
            name: new.name.clone(),
        }),
    }
}

/// By id, or by name when `key` is not a uuid.
pub async fn find(pool: &PgPool, kind: Kind, key: &str) -> Result<Option<Dataset>, sqlx::Error> {
    match Uuid::parse_str(key) {
        Ok(id) => {
            sqlx::query_as(select!(kind, "id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await
        }
        Err(_) => {
            sqlx::query_as(select!(kind, "name = $1"))
                .bind(key)
                .fetch_optional(pool)
                .await
        }
    }
}

/// The names of rows by id (ids without a row are absent).
pub async fn names(
    pool: &PgPool,
    kind: Kind,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>, sqlx::Error> {
    let query = match kind {
        Kind::Partition => "select id, name from partitions where id = any($1)",
        Kind::EvalSet => "select id, name from eval_sets where id = any($1)",
    };
    let rows: Vec<(Uuid, String)> = sqlx::query_as(query).bind(ids).fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

/// Every partition's id and name, oldest first.
pub async fn all_partitions<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("select id, name from partitions order by created_at, id")
        .fetch_all(db)
        .await
}

/// Partition sizes in UTF-8 bytes and domains by id (ids without a row are absent).
pub async fn partition_sizes(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, (i64, Option<String>)>, sqlx::Error> {
    let rows: Vec<(Uuid, i64, Option<String>)> =
        sqlx::query_as("select id, bytes, domain from partitions where id = any($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(id, b, d)| (id, (b, d))).collect())
}

/// Newest first; pass the last row of a page as `before` for the next.
pub async fn list(
    pool: &PgPool,
    kind: Kind,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Dataset>, sqlx::Error> {
    let (at, id) = before.unzip();
    sqlx::query_as(select!(
        kind,
        "($1::timestamptz is null or (created_at, id) < ($1, $2)) order by created_at desc, id desc limit $3"
    ))
    .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Which partitions a list shows, and for which base and recipe it shows their unit models.
#[derive(Debug, Default, Clone)]
pub struct PartitionFilter {
    /// A part of the name, matched without regard to case.
    pub name_contains: Option<String>,
    pub domain: Option<String>,
    pub base: Option<Uuid>,
    pub recipe: Option<Uuid>,
}

/// A partition as lists show it: with its unit model for the list's base and recipe.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PartitionRow {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub partition: Dataset,
    pub unit_model: Option<serde_json::Value>,
}

/// Partitions newest first, filtered; pass the last row of a page as `before` for the next.
/// Each carries its unit model for `filter`'s base and recipe (`null` without one): id,
/// state, job, and `data_tokens` (the partition's size in that base's tokens, once trained).
pub async fn list_partitions(
    pool: &PgPool,
    filter: &PartitionFilter,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<PartitionRow>, sqlx::Error> {
    let (at, id) = before.unzip();
    sqlx::query_as(
        "select p.*,
                case when m.id is null then null else jsonb_build_object(
                    'id', m.id, 'state', m.state, 'job', m.job_id,
                    'data_tokens', (j.result->>'data_tokens')::bigint) end as unit_model
         from partitions p
         left join models m on m.partition_id = p.id and m.base_id = $1 and m.recipe_id = $2
         left join jobs j on j.id = m.job_id
         where ($3::text is null or strpos(lower(p.name), lower($3)) > 0)
           and ($4::text is null or p.domain = $4)
           and ($5::timestamptz is null or (p.created_at, p.id) < ($5, $6))
         order by p.created_at desc, p.id desc limit $7",
    )
    .bind(filter.base)
    .bind(filter.recipe)
    .bind(&filter.name_contains)
    .bind(&filter.domain)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Each domain with its number of partitions (`None`: partitions without one), by name.
pub async fn domains(pool: &PgPool) -> Result<Vec<(Option<String>, i64)>, sqlx::Error> {
    sqlx::query_as("select domain, count(*) from partitions group by domain order by domain")
        .fetch_all(pool)
        .await
}

/// The first `limit` partitions by name (of `domain`, when given) that have a ready unit
/// model for the base and recipe: (id, name).
pub async fn first_trained(
    pool: &PgPool,
    base: Uuid,
    recipe: Uuid,
    domain: Option<&str>,
    limit: i64,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "select p.id, p.name from partitions p
         where ($3::text is null or p.domain = $3) and exists (
             select 1 from models m where m.partition_id = p.id and m.base_id = $1
               and m.recipe_id = $2 and m.state = 'ready')
         order by p.name limit $4",
    )
    .bind(base)
    .bind(recipe)
    .bind(domain)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Records a new hash for a dataset's object (the same content, stored again).
pub async fn set_object_sha256(
    db: &mut PgConnection,
    kind: Kind,
    id: Uuid,
    sha256: &str,
) -> Result<Dataset, sqlx::Error> {
    let sql = match kind {
        Kind::Partition => "update partitions set object_sha256 = $2 where id = $1 returning *",
        Kind::EvalSet => {
            "update eval_sets set object_sha256 = $2 where id = $1 returning *, null::text as domain, '{}'::text[] as tags"
        }
    };
    sqlx::query_as(sql)
        .bind(id)
        .bind(sha256)
        .fetch_one(db)
        .await
}

/// Why a partition cannot be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error(
        "partition {name:?} is needed by {scores} score(s), {sweeps} sweep(s), validation(s) or search(es) and {jobs} active job(s)"
    )]
    InUse {
        name: String,
        scores: i64,
        sweeps: i64,
        jobs: i64,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Deletes a partition that no score and no active pre-training or scoring job needs, with
/// its unit models (whose training jobs are cancelled), in the caller's transaction.
/// Returns the ids of the deleted models, whose objects the caller removes after commit.
pub async fn delete_partition(
    db: &mut PgConnection,
    partition: &Dataset,
) -> Result<Vec<Uuid>, DeleteError> {
    // Locks the row, so that no score job is queued for it while this runs.
    sqlx::query("select id from partitions where id = $1 for update")
        .bind(partition.id)
        .execute(&mut *db)
        .await?;
    let member = serde_json::json!([{ "partition": partition.id }]);
    let scores: i64 = sqlx::query_scalar("select count(*) from scores where mixture @> $1")
        .bind(&member)
        .fetch_one(&mut *db)
        .await?;
    let jobs: i64 = sqlx::query_scalar(
        "select count(*) from jobs where state in ('queued', 'running') and (
             (kind = 'pretrain' and payload->>'partition' = $1)
             or (kind = 'score' and payload->'mixture' @> $2))",
    )
    .bind(partition.id.to_string())
    .bind(&member)
    .fetch_one(&mut *db)
    .await?;
    let sweeps = super::sweeps::count_with_partition(&mut *db, partition.id).await?
        + super::validations::count_with_partition(&mut *db, partition.id).await?
        + super::searches::count_with_partition(&mut *db, partition.id).await?;
    if scores > 0 || jobs > 0 || sweeps > 0 {
        return Err(DeleteError::InUse {
            name: partition.name.clone(),
            scores,
            sweeps,
            jobs,
        });
    }
    let models: Vec<(Uuid, Option<Uuid>)> =
        sqlx::query_as("delete from models where partition_id = $1 returning id, job_id")
            .bind(partition.id)
            .fetch_all(&mut *db)
            .await?;
    for job in models.iter().filter_map(|(_, job)| *job) {
        super::jobs::cancel(&mut *db, job).await?;
    }
    sqlx::query("delete from partitions where id = $1")
        .bind(partition.id)
        .execute(&mut *db)
        .await?;
    sqlx::query("select pg_notify($1, $2)")
        .bind(super::CHANGES)
        .bind(format!("deleted:partition:{}", partition.id))
        .execute(&mut *db)
        .await?;
    Ok(models.into_iter().map(|(id, _)| id).collect())
}

/// Whether a partition's unit models are wanted (the healing pass queues only those).
pub async fn set_train(pool: &PgPool, partition: Uuid, train: bool) -> Result<(), sqlx::Error> {
    sqlx::query("update partitions set train = $2 where id = $1")
        .bind(partition)
        .bind(train)
        .execute(pool)
        .await?;
    Ok(())
}
