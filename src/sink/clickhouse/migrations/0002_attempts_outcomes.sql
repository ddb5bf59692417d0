-- Tollgate ClickHouse schema 0002: `attempts` (one row per upstream call, when a request
-- made several: retries, fallbacks, cascades, judges) and `outcomes` (business results
-- reported for a request or a workflow, to price an outcome rather than a call).
--
-- Placeholders (the migration runner substitutes them as plain text before sending):
--   {db}          database name, e.g. tollgate
--   {on_cluster}  empty, or ON CLUSTER <cluster name>
--   {replicated}  empty, or Replicated (with a cluster: Replicated*MergeTree engines)
--   {ttl}         empty, or a TTL clause on the column ts, e.g.
--                 TTL toDateTime(ts) + INTERVAL 400 DAY
-- Statements end with a semicolon at the end of a line. Every statement is idempotent.
-- Both tables deduplicate replayed batches the same way as `requests` (see 0001): the
-- sink sends each batch with its own stable insert_deduplication_token.

-- ORDER BY: attempts are analysed per provider / model / role (fallback rates, cascade
-- savings, judge cost) over a time range; one request's attempts are found through the
-- request_id skip index and come out ordered by attempt.
CREATE TABLE IF NOT EXISTS {db}.attempts {on_cluster}
(
    ts                  DateTime64(3, 'UTC'),
    request_id          String,
    -- 1-based, in the order the upstream calls were made
    attempt             UInt16,
    -- 'primary' | 'fallback' | 'cascade_cheap' | 'cascade_strong' | 'judge' | ...
    role                LowCardinality(String),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    status              UInt16,
    input_tokens        UInt64,
    output_tokens       UInt64,
    cached_input_tokens UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    -- 'reported' | 'estimated' | 'none'; optional in the JSON
    usage_source        LowCardinality(String) DEFAULT 'reported',
    -- exact USD; NULL when the model has no price
    cost_usd            Nullable(Decimal(38, 9)),
    latency_ms          UInt64,
    ttfb_ms             Nullable(UInt64),
    error               Nullable(String),

    INDEX request_id_bf request_id TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = {replicated}MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (provider, model, role, ts, request_id, attempt)
{ttl}
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

-- ORDER BY: dashboards pick an outcome kind and a time range, then join to requests by
-- workflow_id or request_id (skip indexes below).
CREATE TABLE IF NOT EXISTS {db}.outcomes {on_cluster}
(
    ts          DateTime64(3, 'UTC'),
    -- empty when the outcome is for a whole workflow
    request_id  String,
    workflow_id String,
    outcome     LowCardinality(String),
    value       Nullable(Float64),
    tags        Map(String, String),

    INDEX request_id_bf request_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX workflow_id_bf workflow_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = {replicated}MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (outcome, ts, workflow_id, request_id)
{ttl}
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;
