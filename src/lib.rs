//! Tollgate: a metering reverse proxy for LLM APIs.
//!
//! Every client request becomes one [`record::Record`] with exact token counts and cost,
//! attributed to team, project, environment, user, feature and workflow.

pub mod admin;
pub mod alerts;
pub mod answer;
pub mod api;
pub mod attribution;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod config;
pub mod convert;
pub mod demo;
pub mod error;
pub mod ledger;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod money;
pub mod policy;
pub mod prices;
pub mod proxy;
pub mod record;
pub mod redis_script;
pub mod reload;
pub mod report;
pub mod server;
pub mod sim;
pub mod simulate;
pub mod sink;
pub mod tokens;
pub mod usage;
