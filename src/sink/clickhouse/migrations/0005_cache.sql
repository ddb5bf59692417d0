-- Tollgate ClickHouse schema 0005: requests answered from the response cache, and what
-- they saved, in `requests` and in the hourly rollup.
--
-- Placeholders (the migration runner substitutes them as plain text before sending):
--   {db}          database name, e.g. tollgate
--   {on_cluster}  empty, or ON CLUSTER <cluster name>
-- Statements end with a semicolon at the end of a line. Every statement is idempotent
-- (ADD COLUMN IF NOT EXISTS; MODIFY QUERY sets the same query again). Rows written before
-- this migration read the defaults: not a hit, nothing saved.
--
-- A hit made no upstream call: its tokens and cost_usd are 0, so spend totals need no
-- filter. What it saved is in columns of its own: the tokens and cost of the request whose
-- answer it replayed. saved_cost_usd is NULL when that cost was unknown (an unpriced
-- model); requests that were not hits have 0 (or NULL in rows written before the proxy
-- filled it in).
ALTER TABLE {db}.requests {on_cluster}
    ADD COLUMN IF NOT EXISTS cache_hit           Bool DEFAULT false,
    ADD COLUMN IF NOT EXISTS saved_input_tokens  UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS saved_output_tokens UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS saved_cost_usd      Nullable(Decimal(38, 9));

-- requests_hourly (0003) sums every column outside its key when parts merge, new ones
-- included; hours rolled up before this migration read 0. saved_cost_usd sums the known
-- savings only, exactly (Decimal, never Float).
ALTER TABLE {db}.requests_hourly {on_cluster}
    ADD COLUMN IF NOT EXISTS cache_hits          UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS saved_input_tokens  UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS saved_output_tokens UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS saved_cost_usd      Decimal(38, 9) DEFAULT 0;

-- The view's new query, in place: MODIFY QUERY swaps it atomically, so no insert between
-- two statements goes unrolled (dropping and recreating the view would leave such a gap).
-- It names the columns above, so it runs after them. The first 17 columns are 0003's.
-- Tested on 26.9, where it needs no setting; older servers may need
-- allow_experimental_alter_materialized_view_structure = 1.
ALTER TABLE {db}.requests_hourly_mv {on_cluster} MODIFY QUERY
SELECT
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
    sum(r.latency_ms)                                    AS latency_ms_sum,
    countIf(r.cache_hit)                                 AS cache_hits,
    sum(r.saved_input_tokens)                            AS saved_input_tokens,
    sum(r.saved_output_tokens)                           AS saved_output_tokens,
    sum(ifNull(r.saved_cost_usd, toDecimal128(0, 9)))    AS saved_cost_usd
FROM {db}.requests AS r
GROUP BY hour, team, project, env, model, provider;
