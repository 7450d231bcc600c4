-- Daily and monthly rollups as TimescaleDB continuous aggregates, for the aggregation API's
-- day and month buckets (measured in docs/performance.md: a factory's year in month buckets
-- reads about 600 rows instead of 219,000).  On plain PostgreSQL nothing here is created and
-- the API reads hourly_aggregates / floor_hourly as before.
--
-- Buckets are local dates (`ymd`, the location's own time zone), which a UTC time_bucket
-- cannot express: each rollup groups by the UTC bucket *and* the local date (or month), so a
-- local day is at most two rows, which the API adds up.  Sums and counts, never averages, so
-- every level above stays weighted by readings.
--
--   loc_daily     <- hourly_aggregates  (sensor hours of a location, per local date)
--   loc_monthly   <- loc_daily          (hierarchical)
--   floor_daily   <- floor_hourly       (floor-hours, per local date; floor_hourly becomes a
--   floor_monthly <- floor_daily         hypertable for it)
--
-- All four answer in real time (materialized_only = false): buckets past the watermark are
-- computed from their sources at query time.  Materialized buckets are brought up to date
--   * by the aggregates sink, right after it commits a batch with hours of an earlier UTC day,
--     and after a master-data import or a deletion of a location (iotmon/db/rollups.py);
--   * by a refresh policy per rollup (every IOTMON_DB__ROLLUP_REFRESH_EVERY, first run one
--     interval after creation; `iotmon migrate` materializes existing rows itself) for
--     anything else, such as a crash between the sink's commit and its refresh.

-- Create what is missing; returns what it did.  Called by `iotmon migrate` after
-- ensure_time_series_storage() whenever TimescaleDB is enabled.
CREATE FUNCTION ensure_rollups(refresh_every interval) RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
    here    text := current_schema();
    did     text[] := '{}';
    metrics text := 'sum(temperature_count) AS temperature_count,'
                    ' sum(temperature_sum) AS temperature_sum,'
                    ' max(temperature_max) AS temperature_max,'
                    ' sum(humidity_count) AS humidity_count,'
                    ' sum(humidity_sum) AS humidity_sum,'
                    ' max(humidity_max) AS humidity_max,'
                    ' sum(pcv_temperature_count) AS pcv_temperature_count,'
                    ' sum(pcv_temperature_sum) AS pcv_temperature_sum,'
                    ' max(pcv_temperature_max) AS pcv_temperature_max,'
                    ' bool_and(is_final) AS is_final';
    r       record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN 'plain PostgreSQL: no rollups';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                    WHERE hypertable_schema = here AND hypertable_name = 'floor_hourly') THEN
        PERFORM create_hypertable(format('%I.floor_hourly', here)::regclass, 'hour_start',
                                  chunk_time_interval => interval '30 days',
                                  migrate_data => true);
        did := did || 'floor_hourly became a hypertable'::text;
    END IF;
    FOR r IN SELECT * FROM (VALUES
        (1, 'loc_daily', 'time_bucket(''1 day'', hour_start) AS bucket, loc_id, ymd',
            'hourly_aggregates', 'bucket, loc_id, ymd'),
        (2, 'loc_monthly', 'time_bucket(''1 month'', bucket) AS bucket, loc_id,'
            ' substr(ymd, 1, 6) AS ym', 'loc_daily', '1, loc_id, 3'),
        (3, 'floor_daily', 'time_bucket(''1 day'', hour_start) AS bucket, factory, building,'
            ' floor, ymd', 'floor_hourly', 'bucket, factory, building, floor, ymd'),
        (4, 'floor_monthly', 'time_bucket(''1 month'', bucket) AS bucket, factory, building,'
            ' floor, substr(ymd, 1, 6) AS ym', 'floor_daily', '1, factory, building, floor, 5')
    ) AS v(n, name, keys, source, grouping) ORDER BY n LOOP
        IF NOT EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates
                        WHERE view_schema = here AND view_name = r.name) THEN
            EXECUTE format('CREATE MATERIALIZED VIEW %I.%I WITH (timescaledb.continuous,'
                           ' timescaledb.materialized_only = false) AS SELECT %s, %s'
                           ' FROM %I.%I GROUP BY %s WITH NO DATA',
                           here, r.name, r.keys, metrics, here, r.source, r.grouping);
            did := did || format('%s created', r.name);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM timescaledb_information.jobs
                        WHERE hypertable_schema = here AND proc_name = 'policy_refresh_continuous_aggregate'
                          AND config->>'mat_hypertable_id' = (
                              SELECT h.id::text FROM _timescaledb_catalog.continuous_agg c
                                JOIN _timescaledb_catalog.hypertable h
                                  ON h.id = c.mat_hypertable_id
                               WHERE c.user_view_schema = here AND c.user_view_name = r.name)) THEN
            PERFORM add_continuous_aggregate_policy(
                format('%I.%I', here, r.name)::regclass,
                start_offset => NULL,
                end_offset => interval '1 hour',
                schedule_interval => refresh_every,
                initial_start => now() + refresh_every);
            did := did || format('%s refreshed every %s', r.name, refresh_every);
        END IF;
    END LOOP;
    IF cardinality(did) = 0 THEN
        RETURN 'rollups in place';
    END IF;
    RETURN array_to_string(did, '; ');
END
$fn$;
