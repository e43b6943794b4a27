-- API tokens. A token reads `mpt_<id>_<secret>`; only the sha256 of the secret is kept, so a
-- token is shown once, when it is created. Revoked tokens stay listed.
create table tokens (
    id uuid primary key,
    name text not null,
    scope text not null check (scope in ('read', 'write', 'admin')),
    secret_sha256 bytea not null,
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
create unique index tokens_live_name on tokens (name) where revoked_at is null;
