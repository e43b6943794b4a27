-- A search scores its points with one proxy (`average`: the merged parameters).
alter table searches add column proxy text not null default 'average';
