-- The gateway account that reports a sensor (`iotmon gateways`).  Ingest dead-letters a
-- reading of an assigned sensor that came from any other gateway as `wrong_gateway`.
-- NULL: any source may report it (as before).
ALTER TABLE sensors ADD COLUMN gateway text
    CHECK (gateway ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$');
