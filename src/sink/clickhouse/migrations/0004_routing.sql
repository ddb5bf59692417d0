-- Tollgate ClickHouse schema 0004: what routing policies add to a request, and the
-- attribution an attempt needs to be analysed on its own.
--
-- Placeholders (the migration runner substitutes them as plain text before sending):
--   {db}          database name, e.g. tollgate
--   {on_cluster}  empty, or ON CLUSTER <cluster name>
-- Statements end with a semicolon at the end of a line. Every statement is idempotent
-- (ADD COLUMN IF NOT EXISTS). Rows written before this migration read the defaults.
--
-- requests: tokens and cost_usd are totals over the request's attempts; `model` is the
-- model whose answer the client got. counterfactual_cost_usd is what that answer would
-- have cost on the model the client asked for, so routing savings are
-- counterfactual_cost_usd - cost_usd (NULL when either side has no price).
ALTER TABLE {db}.requests {on_cluster}
    ADD COLUMN IF NOT EXISTS policy                 LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS attempts               UInt16 DEFAULT 1,
    ADD COLUMN IF NOT EXISTS escalations            UInt16 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS counterfactual_cost_usd Nullable(Decimal(38, 9));

-- attempts: one row per upstream call. role is why the call was made ('primary',
-- 'retry', 'fallback', 'escalation', 'judge'); verdict is what became of its answer
-- ('served', 'accepted', 'rejected', 'failed', 'aborted', 'graded'); judge names the judge
-- that rejected it. The attribution columns repeat the request's so waste and escalation
-- rates group by team or feature without a join.
ALTER TABLE {db}.attempts {on_cluster}
    ADD COLUMN IF NOT EXISTS policy   LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS verdict  LowCardinality(String) DEFAULT 'served',
    ADD COLUMN IF NOT EXISTS judge    LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS team     LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS project  LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS env      LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS `user`   String DEFAULT '',
    ADD COLUMN IF NOT EXISTS feature  LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS key_name LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS endpoint LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS stream   Bool DEFAULT false;
