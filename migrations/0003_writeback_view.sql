-- The write-back shape existing reports read: one row per finished case,
-- 1 when a code was texted, 0 when not.
CREATE OR REPLACE VIEW {schema}.writeback AS
SELECT
    COALESCE(o.phone_e164, c.phone)                 AS "NUMBER",
    CASE WHEN o.status = 'sent' THEN 1 ELSE 0 END   AS "MESSAGE_SENT",
    o.finished_at                                   AS "MESSAGE_SENT_AT"
FROM {schema}.outcomes o
LEFT JOIN {schema}.cases c ON c.case_id = o.case_id
WHERE o.status <> 'queued';
