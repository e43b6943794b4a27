//! mixpool: score data mixtures by the perplexity of parameter-averaged unit models.

pub mod api;
pub mod app;
pub mod cli;
pub mod cloze;
pub mod config;
pub mod engine;
pub mod error;
pub mod fsck;
pub mod ingest;
pub mod jobs;
pub mod mixture;
pub mod proxy;
pub mod registry;
pub mod search;
pub mod service;
pub mod sources;
pub mod stats;
pub mod store;
pub mod validation;
pub mod web;
pub mod worker;
