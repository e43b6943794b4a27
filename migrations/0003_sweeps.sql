-- Sweeps: many mixtures scored on many eval sets at once, in shards run by `sweep` jobs;
-- the job kinds of sweeps, validations and exports.
-- A sweep's results are ordinary scores, found by their keys; the sweep keeps its list.

alter table jobs drop constraint jobs_kind_check;
alter table jobs add constraint jobs_kind_check
    check (kind in ('pretrain', 'train', 'score', 'sweep', 'validate', 'export'));

create table sweeps (
    id uuid primary key,
    base_id uuid not null references bases (id),
    recipe_id uuid not null references recipes (id),
    weighting text not null check (weighting in ('uniform', 'tokens')),
    eval_set_ids uuid[] not null,
    eval_config jsonb not null,
    eval_config_sha256 text not null,
    -- The request as it was asked (names, sizes or mixtures), for the record.
    request jsonb not null,
    mixtures integer not null,
    created_at timestamptz not null default now()
);

create index sweeps_created on sweeps (created_at desc, id desc);

create table sweep_mixtures (
    sweep_id uuid not null references sweeps (id) on delete cascade,
    position integer not null,
    -- The canonical key and members ([{"partition", "weight"}]) of the mixture's scores.
    mixture_key text not null,
    mixture jsonb not null,
    partition_ids uuid[] not null,
    primary key (sweep_id, position)
);

create index sweep_mixtures_partitions on sweep_mixtures using gin (partition_ids);

create table sweep_jobs (
    sweep_id uuid not null references sweeps (id) on delete cascade,
    job_id uuid not null references jobs (id),
    primary key (sweep_id, job_id)
);
