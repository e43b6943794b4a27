-- Files kept beside a base's weights under bases/<id>/<file> — the tokenizer and the
-- imported checkpoint's own config — as file name → sha256, verified when read back.
alter table bases add column files jsonb not null default '{}';
