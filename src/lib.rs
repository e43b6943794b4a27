//! mixpool: score data mixtures by the perplexity of parameter-averaged unit models.

pub mod api;
pub mod client;
pub mod config;
pub mod demo;
pub mod engine;
pub mod experiment;
pub mod fsck;
pub mod ingest;
pub mod jobs;
pub mod local;
pub mod mixture;
pub mod registry;
pub mod scoring;
pub mod search;
pub mod serve;
pub mod stats;
pub mod store;
pub mod token;
pub mod validation;
pub mod web;
pub mod worker;
