-- Attempts that count against max_attempts ("strikes"): a retryable failure, or a lease that
-- expired while the job made no progress. A worker killed while its job advances (a training
-- resumes from its mirrored state) does not use the job up; `attempts` still numbers every
-- lease, which fences writes by a worker whose lease was taken over.
alter table jobs add column strikes int not null default 0;
alter table jobs add column claimed_progress real not null default 0;
update jobs set strikes = attempts where state in ('failed', 'queued', 'running');
