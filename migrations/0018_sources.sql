-- Partitions and eval sets read in place from objects of the pool's store: the objects' keys,
-- sizes and sha256 as first read, their format and the text's column ({"format",
-- "text_field", "objects": [{"key", "bytes", "sha256"}]}). Such a dataset has no object of
-- its own (object_sha256 is empty); null for uploads.
alter table partitions add column sources jsonb;
alter table eval_sets add column sources jsonb;

-- `register` jobs read such objects, record them and register the dataset.
alter table jobs drop constraint jobs_kind_check;
alter table jobs add constraint jobs_kind_check
    check (kind in ('pretrain', 'train', 'score', 'sweep', 'validate', 'export', 'search', 'register'));
