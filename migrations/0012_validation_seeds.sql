-- A validation is trained with a seed: its recipe's unless the request names another, so the
-- same mixture trained again with another seed shows how far two trainings disagree — the
-- ceiling of any proxy. Existing validations were trained with their recipe's seed.
alter table validations add column seed bigint;
update validations v set seed = (r.config ->> 'seed')::bigint from recipes r where r.id = v.recipe_id;
alter table validations alter column seed set not null;
alter table validations drop constraint validations_key;
alter table validations add constraint validations_key
    unique (base_id, recipe_id, sampling, mixture_key, tokens, seed);
