-- Hourly aggregates per sensor in the factory's local hours.  Sums and counts are kept so
-- that daily and monthly averages are weighted by readings, never averages of averages.
CREATE TABLE hourly_aggregates (
    sensor_id    text NOT NULL,
    hour_start   timestamptz NOT NULL,
    loc_id       text NOT NULL,
    ymd          char(8) NOT NULL,
    hour         char(2) NOT NULL,
    temperature_count     integer NOT NULL DEFAULT 0,
    temperature_sum       numeric(14, 2),
    temperature_min       numeric(6, 2),
    temperature_max       numeric(6, 2),
    humidity_count        integer NOT NULL DEFAULT 0,
    humidity_sum          numeric(14, 2),
    humidity_min          numeric(6, 2),
    humidity_max          numeric(6, 2),
    pcv_temperature_count integer NOT NULL DEFAULT 0,
    pcv_temperature_sum   numeric(14, 2),
    pcv_temperature_min   numeric(6, 2),
    pcv_temperature_max   numeric(6, 2),
    is_final     boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_id, hour_start)
);
CREATE INDEX hourly_aggregates_loc_idx ON hourly_aggregates (loc_id, hour_start);
