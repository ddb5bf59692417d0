-- Tollgate ClickHouse schema 0003: hourly rollup of `requests`, kept up to date by a
-- materialized view, for dashboards that do not need single requests.
--
-- Placeholders (the migration runner substitutes them as plain text before sending):
--   {db}          database name, e.g. tollgate
--   {on_cluster}  empty, or ON CLUSTER <cluster name>
--   {replicated}  empty, or Replicated (with a cluster: Replicated*MergeTree engines)
--   {rollup_ttl}  empty, or a TTL clause on the column hour, e.g.
--                 TTL hour + INTERVAL 800 DAY
--                 (rollups usually outlive the raw rows; give it its own retention)
-- Statements end with a semicolon at the end of a line. Every statement is idempotent.
--
-- Reading: SummingMergeTree adds rows with the same key only when parts merge, so always
-- aggregate, e.g.
--   SELECT model, sum(requests), sum(cost_usd), sum(unpriced_requests)
--   FROM {db}.requests_hourly WHERE team = 't' AND hour >= now() - INTERVAL 7 DAY
--   GROUP BY model
-- Money stays exact: cost_usd is Decimal(38, 9) summed as Decimal, never Float.
-- cost_usd sums only priced requests; requests whose model has no price (cost_usd NULL in
-- `requests`) are counted in unpriced_requests and add nothing to cost_usd, so a dashboard
-- can say "plus N unpriced requests" instead of pretending they were free.
--
-- Replays: a batch re-sent with the same insert_deduplication_token is dropped by
-- `requests`, and the view's insert into requests_hourly is deduplicated with a token
-- derived from it (deduplicate_blocks_in_dependent_materialized_views, on by default), which
-- is why requests_hourly keeps a deduplication log too. Rows are never double counted.
-- Do not INSERT into requests_hourly directly.

-- Key: the dashboards' scope (team, project, env) first, then model, provider, hour.
-- Every column outside the key is summed when rows merge.
CREATE TABLE IF NOT EXISTS {db}.requests_hourly {on_cluster}
(
    hour                     DateTime('UTC'),
    team                     LowCardinality(String),
    project                  LowCardinality(String),
    env                      LowCardinality(String),
    model                    LowCardinality(String),
    provider                 LowCardinality(String),
    requests                 UInt64,
    input_tokens             UInt64,
    output_tokens            UInt64,
    cached_input_tokens      UInt64,
    cache_write_tokens       UInt64,
    reasoning_tokens         UInt64,
    -- exact sum of cost_usd over the priced requests only
    cost_usd                 Decimal(38, 9),
    -- requests whose cost_usd was NULL (model has no price)
    unpriced_requests        UInt64,
    -- status >= 400 or error set
    error_requests           UInt64,
    -- usage_source = 'estimated'
    estimated_usage_requests UInt64,
    -- sum of latency_ms, for average latency = latency_ms_sum / requests
    latency_ms_sum           UInt64
)
ENGINE = {replicated}SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (team, project, env, model, provider, hour)
{rollup_ttl}
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

-- Source columns are qualified (r.x) because the output aliases reuse their names.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.requests_hourly_mv {on_cluster}
TO {db}.requests_hourly
AS SELECT
    toStartOfHour(r.ts)                                  AS hour,
    r.team                                               AS team,
    r.project                                            AS project,
    r.env                                                AS env,
    r.model                                              AS model,
    r.provider                                           AS provider,
    count()                                              AS requests,
    sum(r.input_tokens)                                  AS input_tokens,
    sum(r.output_tokens)                                 AS output_tokens,
    sum(r.cached_input_tokens)                           AS cached_input_tokens,
    sum(r.cache_write_tokens)                            AS cache_write_tokens,
    sum(r.reasoning_tokens)                              AS reasoning_tokens,
    sum(ifNull(r.cost_usd, toDecimal128(0, 9)))          AS cost_usd,
    countIf(r.cost_usd IS NULL)                          AS unpriced_requests,
    countIf(r.status >= 400 OR r.error IS NOT NULL)      AS error_requests,
    countIf(r.usage_source = 'estimated')                AS estimated_usage_requests,
    sum(r.latency_ms)                                    AS latency_ms_sum
FROM {db}.requests AS r
GROUP BY hour, team, project, env, model, provider;
