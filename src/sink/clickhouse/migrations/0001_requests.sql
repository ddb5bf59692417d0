-- Tollgate ClickHouse schema 0001: the `requests` table, one row per client request.
--
-- Placeholders (the migration runner substitutes them as plain text before sending):
--   {db}          database name, e.g. tollgate
--   {on_cluster}  empty, or ON CLUSTER <cluster name>
--   {replicated}  empty, or Replicated (with a cluster: Replicated*MergeTree engines)
--   {ttl}         empty, or a TTL clause on the column ts, e.g.
--                 TTL toDateTime(ts) + INTERVAL 400 DAY
-- Statements end with a semicolon at the end of a line; split there, skip pieces that hold
-- only comments and blanks. Every statement is idempotent (IF NOT EXISTS): applying a file
-- twice is a no-op. Tested against ClickHouse 26.9 (scripts/clickhouse-server.md).
--
-- Replays never duplicate rows: the table is a plain MergeTree that keeps a deduplication
-- log of its last 10000 inserts (non_replicated_deduplication_window; Replicated and
-- Shared MergeTree keep one by default), and the sink sends every batch with a stable
-- insert_deduplication_token, so re-sending a batch that was already stored is a no-op,
-- here and in the materialized rollups. ReplacingMergeTree was not chosen: it only
-- collapses duplicates at some later merge, and a materialized view would have counted
-- the duplicate rows in the rollups already.
--
-- ORDER BY: the dashboards always scope to a team / project / env, then filter or group
-- by model and a time range; so these four low-cardinality columns lead the key, ts
-- follows for range scans, and request_id makes the order total. Lookups by request_id,
-- workflow_id, user or a tag key use the skip indexes below.

CREATE DATABASE IF NOT EXISTS {db} {on_cluster};

CREATE TABLE IF NOT EXISTS {db}.requests {on_cluster}
(
    ts                  DateTime64(3, 'UTC'),
    request_id          String,
    team                LowCardinality(String),
    project             LowCardinality(String),
    env                 LowCardinality(String),
    `user`              String,
    feature             LowCardinality(String),
    workflow_id         String,
    tags                Map(String, String),
    key_name            LowCardinality(String),
    provider            LowCardinality(String),
    endpoint            LowCardinality(String),
    requested_model     LowCardinality(String),
    model               LowCardinality(String),
    stream              Bool,
    status              UInt16,
    input_tokens        UInt64,
    output_tokens       UInt64,
    cached_input_tokens UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    -- 'reported' | 'estimated' | 'none'
    usage_source        LowCardinality(String),
    -- exact USD; NULL when the model has no price (never stored as 0)
    cost_usd            Nullable(Decimal(38, 9)),
    latency_ms          UInt64,
    ttfb_ms             Nullable(UInt64),
    error               Nullable(String),

    INDEX request_id_bf request_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX workflow_id_bf workflow_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX user_bf `user` TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX tag_keys_bf mapKeys(tags) TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = {replicated}MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (team, project, env, model, ts, request_id)
{ttl}
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;
