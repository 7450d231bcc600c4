-- Time-series storage for raw readings and hourly aggregates.
-- With TimescaleDB: hypertables (raw in chunks of iotmon.raw_chunk_interval), compression of
-- raw chunks older than iotmon.raw_compress_after, retention of iotmon.raw_retention (and of
-- iotmon.aggregates_retention when set).  `iotmon migrate` sets these from its settings.
-- Without it: BRIN indexes on the time columns, which stay tiny for append-mostly data.
DO $migration$
DECLARE
    raw_chunk   interval := coalesce(nullif(current_setting('iotmon.raw_chunk_interval', true), ''), '1 day');
    agg_chunk   interval := coalesce(nullif(current_setting('iotmon.aggregates_chunk_interval', true), ''), '30 days');
    compress    text := coalesce(current_setting('iotmon.raw_compress_after', true), '');
    raw_keep    text := coalesce(current_setting('iotmon.raw_retention', true), '');
    agg_keep    text := coalesce(current_setting('iotmon.aggregates_retention', true), '');
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('readings', 'capture_dt',
                                  chunk_time_interval => raw_chunk, migrate_data => true);
        PERFORM create_hypertable('hourly_aggregates', 'hour_start',
                                  chunk_time_interval => agg_chunk, migrate_data => true);
        IF compress <> '' THEN
            ALTER TABLE readings SET (timescaledb.compress,
                                      timescaledb.compress_segmentby = 'sensor_id',
                                      timescaledb.compress_orderby = 'capture_dt');
            PERFORM add_compression_policy('readings', compress::interval);
        END IF;
        IF raw_keep <> '' THEN
            PERFORM add_retention_policy('readings', raw_keep::interval);
        END IF;
        IF agg_keep <> '' THEN
            PERFORM add_retention_policy('hourly_aggregates', agg_keep::interval);
        END IF;
        RAISE NOTICE 'TimescaleDB: readings and hourly_aggregates are hypertables (raw chunks %, compress after %, keep raw %, keep aggregates %)',
            raw_chunk, nullif(compress, ''), nullif(raw_keep, ''), coalesce(nullif(agg_keep, ''), 'forever');
    ELSE
        CREATE INDEX readings_time_brin ON readings USING brin (capture_dt);
        CREATE INDEX hourly_aggregates_time_brin ON hourly_aggregates USING brin (hour_start);
        RAISE NOTICE 'plain PostgreSQL (TimescaleDB not installed): BRIN indexes on time columns; no compression or retention policies';
    END IF;
END
$migration$;
