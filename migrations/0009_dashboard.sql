-- What the dashboard shows beyond the pool itself.

-- A training's loss every few steps, written with its progress, so a unit model's loss curve
-- survives restarts and resumes (a resumed run writes the same steps again, to the same
-- values: training resumes exactly).
create table job_losses (
    job_id uuid not null references jobs (id) on delete cascade,
    step integer not null,
    loss double precision not null,
    primary key (job_id, step)
);

-- Workers as they last reported themselves, every few seconds while they run.
create table workers (
    name text primary key,
    device text not null,
    kinds text[] not null,
    started_at timestamptz not null,
    seen_at timestamptz not null default now()
);

-- Browsing partitions by domain, and scores by eval set (leaderboards, heatmaps).
create index partitions_domain on partitions (domain, name);
create index scores_eval_set on scores (eval_set_id, base_id, recipe_id);
