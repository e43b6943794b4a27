-- Each unit model's per-token NLLs on an eval set, the ensemble proxy's input: computed once
-- by a forward pass, stored as an object under the model's folder, and reused by every
-- ensemble score of a mixture that holds the unit. The object's name carries its sha256, so
-- two workers that computed it at once never overwrite the one a row names.
create table unit_logprobs (
    model_id uuid not null references models (id) on delete cascade,
    eval_set_id uuid not null references eval_sets (id) on delete cascade,
    eval_config_sha256 text not null,
    object text not null,
    sha256 text not null,
    tokens bigint not null,
    created_at timestamptz not null default now(),
    primary key (model_id, eval_set_id, eval_config_sha256)
);

-- A sweep scores its mixtures with one proxy (`average`: the merged parameters).
alter table sweeps add column proxy text not null default 'average';

-- A unit model's diagonal Fisher estimate (AdamW's final second moments), kept beside its
-- weights for the Fisher-weighted merge; models trained before have none.
alter table models add column fisher_sha256 text;
