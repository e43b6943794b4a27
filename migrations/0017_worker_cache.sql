-- What each worker's cache of model weights did since it started (hits, misses, bytes
-- fetched, evictions) and holds now, as it last reported it (the metrics read these).
alter table workers add column fetched jsonb not null default '{}';
alter table workers add column cache_bytes bigint not null default 0;

-- Jobs that share their inputs (a sweep's shards share its unit models) share an affinity: a
-- worker prefers the queued jobs with the affinity of the last job it ran.
alter table jobs add column affinity text;
