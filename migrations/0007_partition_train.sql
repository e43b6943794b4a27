-- Whether a partition's unit models are wanted: false when it was uploaded with train=false
-- (kept for pre-training or later), so that the healing pass leaves it alone.
alter table partitions add column train boolean not null default true;
