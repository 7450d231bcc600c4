-- Time-series storage kept in line with the server, on every `iotmon migrate` (006 decided it
-- once, when the schema was created, so a schema created on plain PostgreSQL stayed on plain
-- tables when TimescaleDB came later).  `iotmon migrate` calls ensure_time_series_storage()
-- after the migrations whenever TimescaleDB is enabled in the database:
--   * readings and hourly_aggregates become hypertables, with their rows, if they are not;
--     the BRIN indexes of the plain layout go (chunks make them useless);
--   * compression of raw chunks and the retention policies are added if missing.
-- Calling it again changes nothing.  Returns what it did, for the log.
CREATE FUNCTION ensure_time_series_storage(
    raw_chunk interval,
    agg_chunk interval,
    compress_after text,
    raw_keep text,
    agg_keep text
) RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
    here text := current_schema();
    did  text[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN 'plain PostgreSQL: nothing to do';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                    WHERE hypertable_schema = here AND hypertable_name = 'readings') THEN
        DROP INDEX IF EXISTS readings_time_brin;
        PERFORM create_hypertable(format('%I.readings', here)::regclass, 'capture_dt',
                                  chunk_time_interval => raw_chunk, migrate_data => true);
        did := did || 'readings became a hypertable'::text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                    WHERE hypertable_schema = here AND hypertable_name = 'hourly_aggregates') THEN
        DROP INDEX IF EXISTS hourly_aggregates_time_brin;
        PERFORM create_hypertable(format('%I.hourly_aggregates', here)::regclass, 'hour_start',
                                  chunk_time_interval => agg_chunk, migrate_data => true);
        did := did || 'hourly_aggregates became a hypertable'::text;
    END IF;
    IF compress_after <> '' THEN
        IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                        WHERE hypertable_schema = here AND hypertable_name = 'readings'
                          AND compression_enabled) THEN
            EXECUTE format('ALTER TABLE %I.readings SET (timescaledb.compress, '
                           'timescaledb.compress_segmentby = %L, '
                           'timescaledb.compress_orderby = %L)', here, 'sensor_id', 'capture_dt');
            did := did || 'readings compressed'::text;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM timescaledb_information.jobs
                        WHERE hypertable_schema = here AND hypertable_name = 'readings'
                          AND proc_name = 'policy_compression') THEN
            PERFORM add_compression_policy(format('%I.readings', here)::regclass,
                                           compress_after::interval);
            did := did || format('compression after %s', compress_after);
        END IF;
    END IF;
    IF raw_keep <> '' AND NOT EXISTS (
        SELECT 1 FROM timescaledb_information.jobs
         WHERE hypertable_schema = here AND hypertable_name = 'readings'
           AND proc_name = 'policy_retention') THEN
        PERFORM add_retention_policy(format('%I.readings', here)::regclass, raw_keep::interval);
        did := did || format('raw readings kept %s', raw_keep);
    END IF;
    IF agg_keep <> '' AND NOT EXISTS (
        SELECT 1 FROM timescaledb_information.jobs
         WHERE hypertable_schema = here AND hypertable_name = 'hourly_aggregates'
           AND proc_name = 'policy_retention') THEN
        PERFORM add_retention_policy(format('%I.hourly_aggregates', here)::regclass,
                                     agg_keep::interval);
        did := did || format('hourly aggregates kept %s', agg_keep);
    END IF;
    IF cardinality(did) = 0 THEN
        RETURN 'TimescaleDB: hypertables and policies in place';
    END IF;
    RETURN 'TimescaleDB: ' || array_to_string(did, '; ');
END
$fn$;
