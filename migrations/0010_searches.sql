-- Ratio searches: mixture weights over a list of partitions, scored round by round by one
-- `search` job. Its points are ordinary scores with explicit weights; the search keeps their
-- list, in the order they were evaluated.

alter table jobs drop constraint jobs_kind_check;
alter table jobs add constraint jobs_kind_check
    check (kind in ('pretrain', 'train', 'score', 'sweep', 'validate', 'export', 'search'));

create table searches (
    id uuid primary key,
    base_id uuid not null references bases (id),
    recipe_id uuid not null references recipes (id),
    partition_ids uuid[] not null,
    eval_set_ids uuid[] not null,
    -- The objective's weight of each eval set (in eval_set_ids' order), summing to 1: the
    -- search minimises the weighted sum of log perplexities.
    objective double precision[] not null,
    method text not null check (method in ('sample')),
    -- Points to evaluate before the proposal.
    budget integer not null check (budget > 0),
    -- Per partition (in partition_ids' order).
    bounds_min double precision[] not null,
    bounds_max double precision[] not null,
    prior double precision[] not null,
    seed bigint not null,
    eval_config jsonb not null,
    eval_config_sha256 text not null,
    -- The request as it was asked (names), for the record.
    request jsonb not null,
    job_id uuid references jobs (id),
    created_at timestamptz not null default now()
);

create index searches_created on searches (created_at desc, id desc);
create index searches_partitions on searches using gin (partition_ids);

create table search_points (
    search_id uuid not null references searches (id) on delete cascade,
    position integer not null,
    round integer not null,
    -- 'sample' (a round's candidate) or 'proposal' (the predicted optimum, scored last).
    role text not null check (role in ('sample', 'proposal')),
    -- The explicit-weight score's mixture key, and the weights in partition_ids' order.
    mixture_key text not null,
    weights double precision[] not null,
    primary key (search_id, position)
);
