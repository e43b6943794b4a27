//! The workflows behind the API: each resolves a request's names into rows once, checks
//! everything it says, then queues its jobs (through the job kinds' `queue` functions) or
//! answers from the registry. Handlers in `api/` parse HTTP, call one of these and map
//! [`crate::error::Error`] to a status; nothing here knows HTTP.

pub mod bases;
pub mod cancel;
pub mod export;
pub mod import;
pub mod partitions;
pub mod recipes;
pub mod resolve;
pub mod scoring;
pub mod search;
pub mod sources;
pub mod sweep;
pub mod units;
pub mod validation;
