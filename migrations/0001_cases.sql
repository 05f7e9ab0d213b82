-- The case table as a health department hands it over: one row per test,
-- the phone as it was entered. canotify only reads it. In a deployment whose
-- table has other names, a view with these columns stands in for it.
CREATE TABLE IF NOT EXISTS {schema}.cases (
    case_id      text PRIMARY KEY,
    phone        text,
    test_date    date,
    symptom_date date,
    test_type    text
);
