-- The registry: what the pool holds, and the job queue that fills it.
-- Rows that point at stored objects are written only once their objects are complete.

create table bases (
    id uuid primary key,
    name text not null unique,
    -- The model's config.json.
    config jsonb not null,
    -- 'ready' once the weights are stored; a base pre-trained by a job starts 'pending'.
    state text not null check (state in ('pending', 'ready', 'failed')),
    weights_sha256 text,
    created_at timestamptz not null default now()
);

create table recipes (
    id uuid primary key,
    name text not null unique,
    -- The training settings, canonical JSON, and its sha256: equal settings are one recipe.
    config jsonb not null,
    config_sha256 text not null unique,
    created_at timestamptz not null default now()
);

create table partitions (
    id uuid primary key,
    name text not null unique,
    domain text,
    tags text[] not null default '{}',
    -- sha256 of the normalised JSONL: re-uploading the same bytes finds the same partition.
    sha256 text not null unique,
    -- sha256 of the stored (compressed) object, checked when it is read back.
    object_sha256 text not null,
    bytes bigint not null,
    documents bigint not null,
    created_at timestamptz not null default now()
);

create table eval_sets (
    id uuid primary key,
    name text not null unique,
    sha256 text not null unique,
    object_sha256 text not null,
    bytes bigint not null,
    documents bigint not null,
    created_at timestamptz not null default now()
);

create table jobs (
    id uuid primary key,
    kind text not null check (kind in ('pretrain', 'train', 'score', 'validate')),
    payload jsonb not null,
    -- Identical work shares one active job.
    dedup_key text,
    state text not null check (state in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority integer not null default 0,
    -- Incremented by every claim; state changes are fenced by it, so a worker that lost its
    -- lease cannot overwrite the next owner's work.
    attempts integer not null default 0,
    max_attempts integer not null default 3 check (max_attempts > 0),
    lease_owner text,
    lease_expires_at timestamptz,
    cancel_requested boolean not null default false,
    progress real not null default 0,
    message text,
    loss double precision,
    result jsonb,
    error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    started_at timestamptz,
    finished_at timestamptz
);

create index jobs_queued on jobs (priority desc, created_at) where state = 'queued';
create index jobs_leases on jobs (lease_expires_at) where state = 'running';
create unique index jobs_active_dedup on jobs (dedup_key) where state in ('queued', 'running');
create index jobs_created on jobs (created_at desc, id desc);

create table models (
    id uuid primary key,
    base_id uuid not null references bases (id),
    recipe_id uuid not null references recipes (id),
    partition_id uuid not null references partitions (id),
    state text not null check (state in ('queued', 'ready', 'failed')),
    job_id uuid references jobs (id),
    weights_sha256 text,
    created_at timestamptz not null default now(),
    unique (base_id, recipe_id, partition_id)
);

create table scores (
    id uuid primary key,
    base_id uuid not null references bases (id),
    recipe_id uuid not null references recipes (id),
    -- Sorted partition ids with normalised weights.
    mixture_key text not null,
    mixture jsonb not null,
    weighting text not null,
    merge_method text not null,
    eval_set_id uuid not null references eval_sets (id),
    eval_config jsonb not null,
    eval_config_sha256 text not null,
    result jsonb not null,
    created_at timestamptz not null default now(),
    unique (base_id, recipe_id, mixture_key, weighting, merge_method, eval_set_id, eval_config_sha256)
);
