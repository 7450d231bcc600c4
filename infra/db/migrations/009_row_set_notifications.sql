-- A second channel, iotmon_rows_changed (payload: the schema), for changes of *which* rows
-- a realtime answer holds: a sensor's first row in latest_readings, a row that moved to
-- another location, deleted rows, and any change of the locations.  When the API takes the
-- values of each sensor's newest status from the latest topic (api/latest.py), the latest
-- sink's updates of values it has already shown need no new query; these changes do.
-- iotmon_data_changed (migration 008) still fires for every change.
CREATE FUNCTION notify_rows_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('iotmon_rows_changed', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$fn$;

-- Row-level, so that only rows really inserted fire it: an INSERT ... ON CONFLICT DO UPDATE
-- fires the INSERT triggers of the rows it inserted and the UPDATE triggers of the others.
-- PostgreSQL sends one notification per transaction however many rows fired it.
CREATE TRIGGER latest_readings_row_inserted
    AFTER INSERT ON latest_readings
    FOR EACH ROW EXECUTE FUNCTION notify_rows_changed();
CREATE TRIGGER latest_readings_row_moved
    AFTER UPDATE OF loc_id ON latest_readings
    FOR EACH ROW WHEN (OLD.loc_id IS DISTINCT FROM NEW.loc_id)
    EXECUTE FUNCTION notify_rows_changed();
CREATE TRIGGER latest_readings_rows_deleted
    AFTER DELETE OR TRUNCATE ON latest_readings
    FOR EACH STATEMENT EXECUTE FUNCTION notify_rows_changed();
CREATE TRIGGER locations_rows_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON locations
    FOR EACH STATEMENT EXECUTE FUNCTION notify_rows_changed();
