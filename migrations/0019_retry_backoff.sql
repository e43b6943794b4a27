-- A job handed back after a retryable failure waits before it is claimed again (2, 4, 8, …
-- up to 30 seconds by its strikes), so that a store or database restarting does not burn
-- its attempts in a second.
alter table jobs add column not_before timestamptz;
