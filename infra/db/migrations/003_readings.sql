-- Raw readings (one row per sensor and capture instant: a duplicate delivery is one row)
-- and the latest reading per sensor with its statuses, for realtime queries.
CREATE TABLE readings (
    sensor_id       text NOT NULL,
    capture_dt      timestamptz NOT NULL,
    loc_id          text NOT NULL,
    temperature     numeric(6, 2),
    humidity        numeric(6, 2),
    pcv_temperature numeric(6, 2),
    pcv_computed    boolean NOT NULL DEFAULT false,
    source          text NOT NULL DEFAULT 'kafka',
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_id, capture_dt)
);

CREATE TABLE latest_readings (
    sensor_id          text PRIMARY KEY,
    loc_id             text NOT NULL,
    capture_dt         timestamptz NOT NULL,
    temperature        numeric(6, 2),
    humidity           numeric(6, 2),
    pcv_temperature    numeric(6, 2),
    pcv_computed       boolean NOT NULL DEFAULT false,
    temperature_status text CHECK (temperature_status IN ('normal', 'warning', 'critical')),
    humidity_status    text CHECK (humidity_status IN ('normal', 'warning', 'critical')),
    pcv_temperature_status text
        CHECK (pcv_temperature_status IN ('normal', 'warning', 'critical')),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX latest_readings_loc_idx ON latest_readings (loc_id);
