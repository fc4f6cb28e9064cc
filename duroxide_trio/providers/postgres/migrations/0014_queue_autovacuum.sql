-- duroxide-trio PostgreSQL schema, version 14: autovacuum keeps up with the queue tables.
--
-- Every message and every lock row is inserted and deleted within seconds, so the queue tables stay small
-- while their dead rows pile up: a fan-out orchestration leaves about a dozen. The fetches scan the
-- visible_at indexes from the oldest entry, through every dead entry not yet vacuumed: with 900 000 dead
-- orchestrator_queue rows (what seeding a million history rows through timers leaves) a fetch read ~11 000
-- buffers and took 15-40 ms instead of 0.5 ms, and the whole runtime ran at 43 % of its speed. The default
-- trigger (20 % of the live rows) is meaningless for a table whose live size is a few hundred rows, and the
-- default cost delay slows the vacuum of a table that is all churn. These tables are vacuumed after a fixed
-- number of dead rows, at full speed, and analysed as often (their size swings with the load).

ALTER TABLE @schema@.orchestrator_queue SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0);
ALTER TABLE @schema@.worker_queue SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0);
ALTER TABLE @schema@.instance_locks SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0);
