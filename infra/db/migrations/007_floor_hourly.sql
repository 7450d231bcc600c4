-- Hourly aggregates rolled up per floor (factory, building, floor), so that factory-, building-
-- and floor-level aggregation reads one row per floor-hour instead of one per sensor-hour
-- (a factory-month went from 168,000 rows to about 17,000).  Sums and counts, never
-- averages, so every level above stays weighted by readings.
--
-- Maintained by refresh_floor_hourly(): the aggregates sink calls it for the floor-hours of
-- every batch it writes (in the same transaction), and a trigger on locations calls it for
-- the old and the new floor of a location whose place changes.  It recomputes the rows of
-- the given floor-hours from hourly_aggregates, so calling it again changes nothing.
CREATE TABLE floor_hourly (
    factory      text NOT NULL,
    building     text,
    floor        integer,
    hour_start   timestamptz NOT NULL,
    ymd          char(8) NOT NULL,
    hour         char(2) NOT NULL,
    temperature_count     bigint NOT NULL,
    temperature_sum       numeric(18, 2),
    temperature_max       numeric(6, 2),
    humidity_count        bigint NOT NULL,
    humidity_sum          numeric(18, 2),
    humidity_max          numeric(6, 2),
    pcv_temperature_count bigint NOT NULL,
    pcv_temperature_sum   numeric(18, 2),
    pcv_temperature_max   numeric(6, 2),
    is_final     boolean NOT NULL,
    CONSTRAINT floor_hourly_key UNIQUE NULLS NOT DISTINCT (factory, building, floor, hour_start)
);
CREATE INDEX floor_hourly_factory_time_idx ON floor_hourly (factory, hour_start);

-- Recompute the rows of the given floor-hours (parallel arrays) from hourly_aggregates and
-- the current locations.
CREATE FUNCTION refresh_floor_hourly(
    p_factory text[], p_building text[], p_floor integer[], p_hour timestamptz[]
) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM floor_hourly f
     USING (SELECT DISTINCT * FROM unnest(p_factory, p_building, p_floor, p_hour)) AS
           k(factory, building, floor, hour_start)
     WHERE f.factory = k.factory AND f.building IS NOT DISTINCT FROM k.building
       AND f.floor IS NOT DISTINCT FROM k.floor AND f.hour_start = k.hour_start;
    INSERT INTO floor_hourly
        SELECT k.factory, k.building, k.floor, k.hour_start, min(a.ymd), min(a.hour),
               sum(a.temperature_count), sum(a.temperature_sum), max(a.temperature_max),
               sum(a.humidity_count), sum(a.humidity_sum), max(a.humidity_max),
               sum(a.pcv_temperature_count), sum(a.pcv_temperature_sum),
               max(a.pcv_temperature_max), bool_and(a.is_final)
          FROM (SELECT DISTINCT * FROM unnest(p_factory, p_building, p_floor, p_hour)) AS
               k(factory, building, floor, hour_start)
          JOIN locations l ON l.factory = k.factory
                          AND l.building IS NOT DISTINCT FROM k.building
                          AND l.floor IS NOT DISTINCT FROM k.floor
          JOIN hourly_aggregates a ON a.loc_id = l.loc_id AND a.hour_start = k.hour_start
         GROUP BY k.factory, k.building, k.floor, k.hour_start;
END
$fn$;

-- The floor-hours of hourly_aggregates rows, given as (loc_id, hour_start) pairs.
CREATE FUNCTION refresh_floor_hourly_for(p_loc_id text[], p_hour timestamptz[])
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    f text[]; b text[]; fl integer[]; h timestamptz[];
BEGIN
    SELECT array_agg(l.factory), array_agg(l.building), array_agg(l.floor), array_agg(t.hour_start)
      INTO f, b, fl, h
      FROM (SELECT DISTINCT * FROM unnest(p_loc_id, p_hour)) AS t(loc_id, hour_start)
      JOIN locations l ON l.loc_id = t.loc_id;
    IF f IS NOT NULL THEN
        PERFORM refresh_floor_hourly(f, b, fl, h);
    END IF;
END
$fn$;

CREATE FUNCTION floor_hourly_location_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    f text[]; b text[]; fl integer[]; h timestamptz[];
BEGIN
    -- The location's hours on its old floor and on its new one.  OLD is NULL on INSERT and
    -- NEW on DELETE (factory is never NULL in a row).
    SELECT array_agg(p.factory), array_agg(p.building), array_agg(p.floor), array_agg(a.hour_start)
      INTO f, b, fl, h
      FROM (VALUES (OLD.loc_id, OLD.factory, OLD.building, OLD.floor),
                   (NEW.loc_id, NEW.factory, NEW.building, NEW.floor))
           AS p(loc_id, factory, building, floor)
      CROSS JOIN LATERAL (SELECT DISTINCT hour_start FROM hourly_aggregates
                           WHERE loc_id = p.loc_id) AS a
     WHERE p.factory IS NOT NULL;
    IF f IS NOT NULL THEN
        PERFORM refresh_floor_hourly(f, b, fl, h);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER floor_hourly_location_moved
    AFTER UPDATE OF factory, building, floor ON locations
    FOR EACH ROW
    WHEN (OLD.factory IS DISTINCT FROM NEW.factory OR OLD.building IS DISTINCT FROM NEW.building
          OR OLD.floor IS DISTINCT FROM NEW.floor)
    EXECUTE FUNCTION floor_hourly_location_changed();
CREATE TRIGGER floor_hourly_location_added_or_removed
    AFTER INSERT OR DELETE ON locations
    FOR EACH ROW EXECUTE FUNCTION floor_hourly_location_changed();

-- The functions resolve tables in this deployment's schema whoever calls them.
DO $bind$
BEGIN
    EXECUTE format('ALTER FUNCTION refresh_floor_hourly(text[], text[], integer[], timestamptz[])'
                   ' SET search_path = %I', current_schema());
    EXECUTE format('ALTER FUNCTION refresh_floor_hourly_for(text[], timestamptz[])'
                   ' SET search_path = %I', current_schema());
    EXECUTE format('ALTER FUNCTION floor_hourly_location_changed() SET search_path = %I',
                   current_schema());
END
$bind$;

-- Existing data.
INSERT INTO floor_hourly
    SELECT l.factory, l.building, l.floor, a.hour_start, min(a.ymd), min(a.hour),
           sum(a.temperature_count), sum(a.temperature_sum), max(a.temperature_max),
           sum(a.humidity_count), sum(a.humidity_sum), max(a.humidity_max),
           sum(a.pcv_temperature_count), sum(a.pcv_temperature_sum), max(a.pcv_temperature_max),
           bool_and(a.is_final)
      FROM hourly_aggregates a JOIN locations l ON l.loc_id = a.loc_id
     GROUP BY l.factory, l.building, l.floor, a.hour_start;
