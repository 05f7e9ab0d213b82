//! Reading the verification simulator's ledger of every SMS it would have
//! sent: how many texts went out, and how many of them went to a person
//! already texted for the same infection. This is the figure that matters,
//! and it is counted from what the server saw, not from canotify's own
//! counters.

use std::collections::HashMap;

use canotify_simulators::verification::SmsRecord;
use jiff::civil::Date;

/// Counts every SMS beyond the first to one phone within `window_days`
/// (by test date, or symptom date when there is none). An SMS with neither
/// date counts as a duplicate when the phone had any other SMS.
pub fn duplicate_sms(ledger: &[SmsRecord], window_days: u32) -> u64 {
    let mut by_phone: HashMap<&str, Vec<Option<Date>>> = HashMap::new();
    for record in ledger {
        let date = record
            .test_date
            .as_deref()
            .or(record.symptom_date.as_deref())
            .and_then(|d| d.parse().ok());
        by_phone
            .entry(record.phone.as_str())
            .or_default()
            .push(date);
    }

    let mut duplicates = 0;
    for dates in by_phone.values_mut() {
        if dates.len() < 2 {
            continue;
        }
        if dates.iter().any(Option::is_none) {
            duplicates += dates.len() as u64 - 1;
            continue;
        }
        dates.sort();
        let mut last_texted: Option<Date> = None;
        for date in dates.iter().flatten() {
            match last_texted {
                Some(last)
                    if (*date - last).get_days()
                        <= i32::try_from(window_days).unwrap_or(i32::MAX) =>
                {
                    duplicates += 1;
                }
                _ => last_texted = Some(*date),
            }
        }
    }
    duplicates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sms(phone: &str, test_date: Option<&str>) -> SmsRecord {
        SmsRecord {
            uuid: String::new(),
            phone: phone.to_owned(),
            test_date: test_date.map(str::to_owned),
            symptom_date: None,
            sent_at: String::new(),
        }
    }

    #[test]
    fn one_text_per_phone_is_no_duplicate() {
        let ledger = [
            sms("+19165550001", Some("2026-11-01")),
            sms("+19165550002", Some("2026-11-01")),
        ];

        assert_eq!(duplicate_sms(&ledger, 14), 0);
    }

    #[test]
    fn a_second_text_within_the_window_is_a_duplicate() {
        let ledger = [
            sms("+19165550001", Some("2026-11-01")),
            sms("+19165550001", Some("2026-11-10")),
        ];

        assert_eq!(duplicate_sms(&ledger, 14), 1);
    }

    #[test]
    fn a_reinfection_after_the_window_is_not() {
        let ledger = [
            sms("+19165550001", Some("2026-10-01")),
            sms("+19165550001", Some("2026-11-10")),
        ];

        assert_eq!(duplicate_sms(&ledger, 14), 0);
    }

    #[test]
    fn texts_without_dates_to_one_phone_count_as_duplicates() {
        let ledger = [
            sms("+19165550001", None),
            sms("+19165550001", Some("2026-11-10")),
        ];

        assert_eq!(duplicate_sms(&ledger, 14), 1);
    }
}
