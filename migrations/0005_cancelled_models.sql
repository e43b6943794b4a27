-- A unit model whose training job was cancelled says so; asking for it again queues it anew.
alter table models drop constraint models_state_check;
alter table models add constraint models_state_check
    check (state in ('queued', 'ready', 'failed', 'cancelled'));
