-- Alerts (one row per alert, updated through its lifecycle), their events, subscriptions
-- and the notification log.
CREATE TABLE alerts (
    alert_id        uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('threshold', 'sensor_silent')),
    sensor_id       text NOT NULL,
    loc_id          text NOT NULL,
    alert_type      text,            -- the metric; NULL for sensor_silent
    alert_level     text NOT NULL CHECK (alert_level IN ('warning', 'critical')),
    state           text NOT NULL CHECK (state IN ('active', 'resolved')),
    threshold_id    bigint,
    threshold_type  text,
    threshold_level text,
    threshold_min   numeric(8, 2),
    threshold_max   numeric(8, 2),
    measured_value  numeric(6, 2),
    message         text NOT NULL,
    alert_time      timestamptz NOT NULL,  -- when it was raised (decision time)
    reading_time    timestamptz,
    updated_at      timestamptz NOT NULL,
    resolved_at     timestamptz,
    resolved_by     text,
    resolve_note    text,
    acknowledged_at timestamptz,
    acknowledged_by text,
    ack_note        text
);
CREATE INDEX alerts_time_idx ON alerts (alert_time DESC);
CREATE INDEX alerts_sensor_idx ON alerts (sensor_id, alert_time DESC);
CREATE INDEX alerts_active_idx ON alerts (state) WHERE state = 'active';

CREATE TABLE alert_events (
    event_id       uuid PRIMARY KEY,
    alert_id       uuid NOT NULL,
    transition     text NOT NULL
        CHECK (transition IN ('raised', 'escalated', 'deescalated', 'resolved')),
    level          text NOT NULL,
    measured_value numeric(6, 2),
    reading_time   timestamptz,
    decided_at     timestamptz NOT NULL,
    payload        jsonb NOT NULL
);
CREATE INDEX alert_events_alert_idx ON alert_events (alert_id, decided_at);

CREATE TABLE alert_subscriptions (
    subscription_id bigserial PRIMARY KEY,
    plant          text,
    factory        text,
    building       text,
    floor          integer,
    area           text,
    sensor_id      text,
    threshold_type text CHECK (threshold_type IN ('temperature', 'humidity', 'pcv_temperature')),
    min_level      text NOT NULL DEFAULT 'warning' CHECK (min_level IN ('warning', 'critical')),
    subscriber     text NOT NULL,
    notify_type    text NOT NULL CHECK (notify_type IN ('email', 'kakao', 'sms', 'app', 'webhook')),
    notify_id      text NOT NULL,
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    notification_id bigserial PRIMARY KEY,
    alert_id        uuid NOT NULL,
    event_id        uuid NOT NULL,
    subscription_id bigint NOT NULL REFERENCES alert_subscriptions (subscription_id)
        ON DELETE CASCADE,
    notify_type     text NOT NULL,
    notify_id       text NOT NULL,
    status          text NOT NULL DEFAULT 'PENDING'
        CHECK (status IN ('PENDING', 'SENT', 'FAILED', 'RETRYING')),
    try_count       integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_time       timestamptz,
    fail_reason     text,
    UNIQUE (event_id, subscription_id)
);
CREATE INDEX notifications_alert_idx ON notifications (alert_id);
