-- Alert delivery controls: escalation, silences, rate limits and digests.
--
-- escalate_after_s / escalate_type / escalate_to: a critical alert this subscription was told
--   about, still unacknowledged and active after escalate_after_s, notifies escalate_to once
--   (through the escalate_type channel).  All three set, or none.
-- max_per_minute: at most this many messages a minute to the subscription's target; beyond it
--   the owed events go out together in one digest.  NULL: the notifier's default; 0: no limit.
ALTER TABLE alert_subscriptions
    ADD COLUMN escalate_after_s integer CHECK (escalate_after_s > 0),
    ADD COLUMN escalate_type text
        CHECK (escalate_type IN ('email', 'webhook', 'slack', 'mqtt')),
    ADD COLUMN escalate_to text,
    ADD COLUMN max_per_minute integer CHECK (max_per_minute >= 0),
    ADD CONSTRAINT alert_subscriptions_escalation_check CHECK (
        (escalate_after_s IS NULL) = (escalate_to IS NULL)
        AND (escalate_after_s IS NULL) = (escalate_type IS NULL));

-- A silence (maintenance window) mutes the events of its scope (NULL = any) and optional
-- metric whose decision time falls in [starts_at, ends_at).  Ending one early moves ends_at;
-- rows are kept, so what was muted, when and by whom stays on record.
CREATE TABLE silences (
    silence_id     bigserial PRIMARY KEY,
    plant          text,
    factory        text,
    building       text,
    floor          integer,
    area           text,
    sensor_id      text,
    threshold_type text CHECK (threshold_type IN ('temperature', 'humidity', 'pcv_temperature')),
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL,
    reason         text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    ended_by       text,
    CHECK (ends_at > starts_at)
);
CREATE INDEX silences_time_idx ON silences (ends_at, starts_at);

-- purpose: what a row is for: the alert event itself, or the escalation of its alert (one per
--   alert and subscription; event_id then holds the alert id).
-- SUPPRESSED: a silence muted it (silence_id says which); logged, never sent.
-- sent_as: the idempotency key of the message that carried it: its own, or a digest's.
-- claim: which claim holds the row's lease.  A delivery renews the lease, and records its
--   attempt, only while its claim still holds: a row whose lease ran out while it waited
--   its turn, and was claimed again, is sent by the new claim alone.
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('PENDING', 'SENT', 'FAILED', 'RETRYING', 'SUPPRESSED'));
ALTER TABLE notifications
    ADD COLUMN purpose text NOT NULL DEFAULT 'alert' CHECK (purpose IN ('alert', 'escalation')),
    ADD COLUMN silence_id bigint REFERENCES silences (silence_id) ON DELETE SET NULL,
    ADD COLUMN sent_as text,
    ADD COLUMN claim uuid;
ALTER TABLE notifications DROP CONSTRAINT notifications_event_id_subscription_id_key;
ALTER TABLE notifications DROP COLUMN idempotency_key;
ALTER TABLE notifications
    ADD COLUMN idempotency_key text NOT NULL GENERATED ALWAYS AS (
        event_id::text || ':' || subscription_id::text
        || CASE WHEN purpose = 'alert' THEN '' ELSE ':' || purpose END) STORED,
    ADD CONSTRAINT notifications_once UNIQUE (event_id, subscription_id, purpose);
-- What the rate limit counts: the messages sent to a target in the last minute.
CREATE INDEX notifications_sent_idx ON notifications (notify_type, notify_id, sent_time)
    WHERE status = 'SENT';
-- The line a claim respects: a subscription's owed rows, in order.
CREATE INDEX notifications_line_idx ON notifications (subscription_id, purpose, notification_id)
    WHERE status IN ('PENDING', 'RETRYING');
