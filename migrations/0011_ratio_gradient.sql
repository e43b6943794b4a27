-- Ratios beyond sampled searches: searches that follow the α-gradient of the merged model,
-- and validations that train on partitions drawn in given proportions.

-- A `gradient` search tunes its weights on one half of each eval set's documents and reports
-- on the other: `eval_set_ids` are then the report halves (the points' scores) and
-- `tune_set_ids` the tune halves, in the same order. Empty for `sample` searches.
alter table searches drop constraint searches_method_check;
alter table searches add constraint searches_method_check check (method in ('sample', 'gradient'));
alter table searches add column tune_set_ids uuid[] not null default '{}';

-- A gradient search's points are its steps; each keeps the objective on the tune halves,
-- which is what picks the proposal (the report halves never steer the search).
alter table search_points drop constraint search_points_role_check;
alter table search_points add constraint search_points_role_check
    check (role in ('sample', 'proposal', 'step'));
alter table search_points add column tune_objective double precision;

-- A validation trains on its partitions' union as it is (`union`: every sequence of the
-- shuffled union equally likely, so partitions weigh by their size), or on sequences drawn
-- from each partition in proportion to `weights` (`weights`, in partition_ids' order, the
-- explicit mixture's key). The token budget may differ from the summed one when asked for.
alter table validations add column sampling text not null default 'union'
    check (sampling in ('union', 'weights'));
alter table validations add column weights double precision[];
alter table validations add constraint validations_weights_check
    check ((sampling = 'weights') = (weights is not null));
alter table validations drop constraint validations_base_id_recipe_id_mixture_key_key;
alter table validations add constraint validations_key
    unique (base_id, recipe_id, sampling, mixture_key, tokens);
