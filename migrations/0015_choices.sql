-- An eval set of multiple-choice questions (`{"context", "choices", "gold", "task"}` per
-- line, normalised from the shape it was uploaded in) names that shape; held-out text has
-- none.
alter table eval_sets add column shape text;
