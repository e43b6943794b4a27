//! mixpool: score data mixtures by the perplexity of parameter-averaged unit models.

pub mod api;
pub mod app;
pub mod bases;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod fsck;
pub mod ingest;
pub mod jobs;
pub mod mixture;
pub mod registry;
pub mod resolve;
pub mod scoring;
pub mod search;
pub mod stats;
pub mod store;
pub mod sweep;
pub mod units;
pub mod validation;
pub mod web;
pub mod worker;
