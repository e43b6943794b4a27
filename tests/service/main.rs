//! Service tests against a real PostgreSQL: a fresh database per test
//! (`MIXPOOL_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/postgres;
//! `make test` starts a server where none answers).

mod api;
mod app;
mod auth;
mod bases;
mod batch;
mod cancel;
mod checkpoints;
mod choices;
mod chrome;
mod cli;
mod dashboard;
mod disks;
mod fsck;
mod helpers;
mod ingest;
mod kinds;
mod logs;
mod measured;
mod models;
mod openapi;
mod outage;
mod queue;
mod registry;
mod resume;
mod search;
mod servers;
mod shutdown;
mod sources;
mod store;
mod sweep;
mod validation;
mod views;
mod worker;
