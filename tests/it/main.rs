//! Integration tests: one binary (every file here a module) so the suite links once; nextest
//! still runs each test in a process of its own.

mod common;

mod alerts;
mod anthropic;
mod budgets;
mod cache;
mod cache_clickhouse;
mod check;
mod clickhouse;
mod clickhouse_harness;
mod counting;
mod dashboards;
mod demo;
mod deploy;
mod durability;
mod errors;
mod forecast;
mod hostile;
mod http;
mod openai;
mod outcomes;
mod promtool;
mod rate_limits;
mod records;
mod redis_cache;
mod reload;
mod routing;
mod routing_gaps;
mod simulate;
mod spend_page;
mod tls;
mod usage;
