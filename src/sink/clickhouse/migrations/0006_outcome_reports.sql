-- Tollgate ClickHouse schema 0006: `outcomes` (0002) gets who reported each outcome, and a
-- unique id per report, as the proxy's outcomes stream ships them.
--
-- Placeholders (the migration runner substitutes them as plain text before sending):
--   {db}          database name, e.g. tollgate
--   {on_cluster}  empty, or ON CLUSTER <cluster name>
-- Statements end with a semicolon at the end of a line. Every statement is idempotent
-- (ADD COLUMN IF NOT EXISTS).
--
-- team: the reporting key's team. An outcome joins only requests of the same team, so a
-- key cannot label another team's requests: join on (team, request_id) or
-- (team, workflow_id), never on the id alone.
--
-- A target may be reported more than once; the latest report wins. Every report is kept
-- (a plain MergeTree: nothing is lost to a merge), and reads pick the latest per target
-- with argMax over (ts, id), e.g. for requests:
--   SELECT team, request_id, argMax(outcome, (ts, id)) AS outcome
--   FROM {db}.outcomes WHERE request_id != '' GROUP BY team, request_id
-- id is a UUIDv7, unique per report, so two reports of the same millisecond still have a
-- single latest.
ALTER TABLE {db}.outcomes {on_cluster}
    ADD COLUMN IF NOT EXISTS id       String DEFAULT '',
    ADD COLUMN IF NOT EXISTS team     LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS key_name String DEFAULT '';
