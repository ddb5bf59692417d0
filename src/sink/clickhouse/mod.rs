//! ClickHouse: the HTTP client and the schema migrations.

pub mod client;
pub mod migrate;

pub use client::{ChError, ClickHouse};
