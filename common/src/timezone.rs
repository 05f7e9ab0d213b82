//! The `tzOffset` the verification server expects: the resident's offset
//! from UTC in minutes at the moment of issuing, daylight saving included.
//! The server uses its sign to decide the earliest test date it accepts.

use jiff::{Timestamp, tz::TimeZone};

/// Loads an IANA time zone such as `America/Los_Angeles`.
pub fn load(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|err| format!("unknown time zone {name:?}: {err}"))
}

/// Minutes east of UTC in `zone` at `at`: -420 in California in summer,
/// -480 in winter.
pub fn offset_minutes(zone: &TimeZone, at: Timestamp) -> i32 {
    zone.to_offset(at).seconds() / 60
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn california_offset_follows_daylight_saving_in_spring() {
        let zone = load("America/Los_Angeles").unwrap();

        // Clocks went forward at 2026-03-08 02:00 PST (10:00 UTC).
        assert_eq!(offset_minutes(&zone, at("2026-03-08T09:59:59Z")), -480);
        assert_eq!(offset_minutes(&zone, at("2026-03-08T10:00:00Z")), -420);
    }

    #[test]
    fn california_offset_follows_daylight_saving_in_autumn() {
        let zone = load("America/Los_Angeles").unwrap();

        // Clocks went back at 2026-11-01 02:00 PDT (09:00 UTC).
        assert_eq!(offset_minutes(&zone, at("2026-11-01T08:59:59Z")), -420);
        assert_eq!(offset_minutes(&zone, at("2026-11-01T09:00:00Z")), -480);
    }

    #[test]
    fn zones_east_of_utc_are_positive() {
        let zone = load("Asia/Kolkata").unwrap();

        assert_eq!(offset_minutes(&zone, at("2026-07-01T00:00:00Z")), 330);
    }

    #[test]
    fn an_unknown_zone_is_a_clear_error() {
        assert!(
            load("Mars/Olympus_Mons")
                .unwrap_err()
                .contains("Mars/Olympus_Mons")
        );
    }
}
