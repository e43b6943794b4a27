-- A search evaluates the natural mixture (its partitions in proportion to their tokens) and
-- the uniform one beside its own points; `natural_weights` keeps the first's weights (empty for
-- searches made before). `check_proxy` names the proxy its final candidates are scored
-- again with, when it differs from the one that scored the points.
alter table searches add column natural_weights float8[] not null default '{}';
alter table searches add column check_proxy text;
alter table search_points drop constraint search_points_role_check;
alter table search_points add constraint search_points_role_check
    check (role in ('sample', 'proposal', 'step', 'natural', 'uniform'));
