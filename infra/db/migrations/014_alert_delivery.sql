-- Alert delivery (`iotmon notifier`): what a subscription is told, and the delivery log.
--
-- transitions: which alert state changes notify (default: raised, escalated, resolved).
-- include_silent: sensor_silent alerts are opt-in.
-- secret: the key of the webhook's HMAC-SHA256 signature header (per subscription).
ALTER TABLE alert_subscriptions
    ADD COLUMN transitions text[] NOT NULL DEFAULT '{raised,escalated,resolved}'
        CHECK (transitions <@ '{raised,escalated,deescalated,resolved}'::text[]),
    ADD COLUMN include_silent boolean NOT NULL DEFAULT false,
    ADD COLUMN secret text;
ALTER TABLE alert_subscriptions DROP CONSTRAINT alert_subscriptions_notify_type_check;
ALTER TABLE alert_subscriptions ADD CONSTRAINT alert_subscriptions_notify_type_check
    CHECK (notify_type IN ('email', 'kakao', 'sms', 'app', 'webhook', 'slack', 'mqtt'));

-- One row per (alert event, subscription): written before the first attempt (so a
-- restart finds what is owed), updated after each.  The idempotency key goes out with
-- every attempt, so a receiver can drop the one repeat a crash mid-delivery may cause.
ALTER TABLE notifications
    ADD COLUMN idempotency_key text NOT NULL
        GENERATED ALWAYS AS (event_id::text || ':' || subscription_id::text) STORED,
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN payload jsonb;
CREATE INDEX notifications_owed_idx ON notifications (next_attempt_at)
    WHERE status IN ('PENDING', 'RETRYING');
