-- Validations: the ground truth for a mixture, a model trained on the union of its
-- partitions (from the same base, with the same recipe, for the partitions' summed budget),
-- evaluated like a score. The service correlates proxy scores with these.

create table validations (
    id uuid primary key,
    base_id uuid not null references bases (id),
    recipe_id uuid not null references recipes (id),
    -- Sorted partition ids with uniform weights: the uniform score's mixture key.
    mixture_key text not null,
    partition_ids uuid[] not null,
    -- The token budget: the recipe's times the number of partitions.
    tokens bigint not null,
    -- 'ready' once the union model's weights are stored under models/<id>/.
    state text not null check (state in ('queued', 'ready', 'failed')),
    job_id uuid references jobs (id),
    weights_sha256 text,
    train jsonb,
    created_at timestamptz not null default now(),
    unique (base_id, recipe_id, mixture_key)
);

create index validations_created on validations (created_at desc, id desc);
create index validations_partitions on validations using gin (partition_ids);

create table validation_scores (
    validation_id uuid not null references validations (id) on delete cascade,
    eval_set_id uuid not null references eval_sets (id),
    eval_config_sha256 text not null,
    eval_config jsonb not null,
    result jsonb not null,
    created_at timestamptz not null default now(),
    primary key (validation_id, eval_set_id, eval_config_sha256)
);
