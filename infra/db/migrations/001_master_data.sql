-- Locations and the sensors installed at them (the original system's fields + time zone).
CREATE TABLE locations (
    loc_id        text PRIMARY KEY,
    plant         text,
    factory       text NOT NULL,
    building      text,
    floor         integer,
    area          text,
    location_name text,
    is_active     boolean NOT NULL DEFAULT true,
    timezone      text NOT NULL DEFAULT 'Asia/Seoul',
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX locations_factory_idx ON locations (factory, building, floor);

CREATE TABLE sensors (
    sensor_id  text PRIMARY KEY,
    loc_id     text NOT NULL REFERENCES locations (loc_id) ON UPDATE CASCADE,
    name       text,
    is_active  boolean NOT NULL DEFAULT true,
    -- true when the sensor was registered automatically from its first reading
    auto_registered boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sensors_loc_idx ON sensors (loc_id);
