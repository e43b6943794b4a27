-- Attempts that count against max_attempts ("strikes"): a retryable failure, or a lease that
-- expired while the job kept nothing new. `saved` is the fraction of the work kept durably
-- (a training's mirrored train state, a sweep's stored mixtures), `claimed_saved` its value
-- when the current lease was taken: a worker killed after its job saved more does not use
-- the job up, one that dies before (a job that kills its workers) does. `attempts` still
-- numbers every lease, which fences writes by a worker whose lease was taken over.
alter table jobs add column strikes int not null default 0;
alter table jobs add column saved real not null default 0;
alter table jobs add column claimed_saved real not null default 0;
update jobs set strikes = attempts where state in ('failed', 'queued', 'running');
