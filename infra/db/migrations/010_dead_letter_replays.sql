-- Dead letters re-published by `iotmon dlq replay`, one row per dead-letter record, so that
-- running the same replay twice re-publishes nothing.  A record is named by its topic,
-- partition and offset; its timestamp as well, because a topic deleted and created again
-- starts its offsets at 0 and a new record there is not the one replayed before.  The row
-- is written only after Kafka confirmed the re-published record.
CREATE TABLE dead_letter_replays (
    topic              text        NOT NULL,
    dlq_partition      integer     NOT NULL,
    dlq_offset         bigint      NOT NULL,
    written_at         timestamptz,           -- the dead letter's record timestamp
    reason             text        NOT NULL,
    stage              text,
    sensor_id          text,                  -- the record key
    replayed_to        text        NOT NULL,  -- topic:partition:offset of the latest copy
    replays            integer     NOT NULL DEFAULT 1 CHECK (replays >= 1),
    first_replayed_at  timestamptz NOT NULL DEFAULT now(),
    last_replayed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, dlq_partition, dlq_offset)
);
