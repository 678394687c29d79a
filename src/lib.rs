//! rulechain: a declarative rule-engine stream processor for IoT telemetry.
//!
//! The rule core ([`rules`] with its node kinds, [`script`], [`engine`]) does no I/O and never reads the
//! wall clock; the harnesses ([`replay`] for `dry-run`/`test`, the live engine for `run`) feed it
//! messages and time and take its effects. See `ARCHITECTURE.md`.
#![warn(missing_docs)]

pub mod alarm;
pub mod civil;
pub mod cli;
pub mod clients;
pub mod config;
pub mod counters;
pub mod diag;
pub mod diff;
pub mod durable;
pub mod duration;
pub mod engine;
pub mod env;
pub mod lineproto;
pub mod live;
pub mod message;
pub mod replay;
pub mod retry;
pub mod rules;
pub mod script;
pub mod signature;
pub mod sinks;
pub mod topic;
pub mod yaml;
