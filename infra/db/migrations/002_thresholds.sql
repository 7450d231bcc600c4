-- Threshold bands per metric, optionally scoped to a factory, building, floor or location.
CREATE TABLE thresholds (
    threshold_id   bigserial PRIMARY KEY,
    threshold_type text NOT NULL
        CHECK (threshold_type IN ('temperature', 'humidity', 'pcv_temperature')),
    level          text NOT NULL
        CHECK (level IN ('green', 'yellow', 'orange', 'red', 'low', 'medium', 'high',
                         'critical', 'warning', 'info')),
    min_value      numeric(8, 2),
    max_value      numeric(8, 2),
    factory        text,
    building       text,
    floor          integer,
    loc_id         text,
    hold_seconds   integer NOT NULL DEFAULT 60 CHECK (hold_seconds >= 0),
    clear_seconds  integer NOT NULL DEFAULT 60 CHECK (clear_seconds >= 0),
    clear_margin   numeric(8, 2) NOT NULL DEFAULT 0 CHECK (clear_margin >= 0),
    upd_dt         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT thresholds_bounds CHECK (
        min_value IS NULL OR max_value IS NULL OR max_value > min_value)
);
CREATE INDEX thresholds_type_idx ON thresholds (threshold_type);
