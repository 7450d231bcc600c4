-- Change notifications for the API's realtime answers.  Every statement that changes the
-- latest readings or the master data they are joined with sends one NOTIFY on the channel
-- iotmon_data_changed, with this deployment's schema as the payload.  PostgreSQL delivers it
-- when the transaction commits, once per transaction however many statements ran, and never
-- for a transaction that rolled back.  The API keeps a rendered answer until such a
-- notification arrives, so a new reading is visible as soon as it is committed instead of
-- after a fixed cache period.
CREATE FUNCTION notify_data_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('iotmon_data_changed', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$fn$;

CREATE TRIGGER latest_readings_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON latest_readings
    FOR EACH STATEMENT EXECUTE FUNCTION notify_data_changed();
CREATE TRIGGER locations_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON locations
    FOR EACH STATEMENT EXECUTE FUNCTION notify_data_changed();
