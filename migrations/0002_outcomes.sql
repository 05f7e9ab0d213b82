-- canotify's own record: one row per case it has claimed or finished.
-- A row with status 'queued' is a claim; every other status is final.
CREATE TABLE IF NOT EXISTS {schema}.outcomes (
    case_id           text PRIMARY KEY,
    status            text NOT NULL CHECK (status IN (
                          'queued', 'sent', 'invalid_phone', 'not_textable',
                          'duplicate', 'rejected', 'failed')),
    reason            text,
    verification_uuid text,
    attempts          integer NOT NULL DEFAULT 0,
    -- The normalised phone and the date of the infection (test date, or
    -- symptom date without one): how one person's cases are found.
    phone_e164        text,
    episode_date      date,
    duplicate_of      text,
    claimed_at        timestamptz,
    published_at      timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS outcomes_phone_e164 ON {schema}.outcomes (phone_e164)
    WHERE phone_e164 IS NOT NULL;
CREATE INDEX IF NOT EXISTS outcomes_status ON {schema}.outcomes (status);
