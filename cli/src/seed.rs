//! `canotify seed`: fills a local case table with the mix a health
//! department really hands over, so the demo and the tests meet every kind
//! of row: mobiles typed four ways, landlines, VoIP, pagers, impossible
//! numbers, missing dates, unknown test types, stale tests, and one person
//! with two tests. Each seeded case carries the outcome canotify should
//! reach for it, for the default settings and simulators.

use canotify_common::Status;
use canotify_common::warehouse::NewCase;
use jiff::civil::Date;

/// The ways a department types one number.
const FORMATS: [&str; 4] = ["plain", "dashed", "international", "leading_one"];

/// California area codes, so the numbers look like the state's.
const AREA_CODES: [u16; 26] = [
    209, 213, 310, 323, 408, 415, 510, 530, 559, 562, 619, 626, 650, 661, 707, 714, 760, 805, 818,
    831, 858, 909, 916, 925, 949, 951,
];

/// Numbers no numbering plan holds, as they appear in real records.
const IMPOSSIBLE: [&str; 8] = [
    "123",
    "555-1234",
    "(000) 000-0000",
    "+1 123 456 7890",
    "916-555-12",
    "916555123456789",
    "n/a",
    "",
];

/// Today's date in UTC: the verification server judges test dates by it.
pub fn today_utc() -> Date {
    jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
}

/// One seeded case and the status canotify should give it.
#[derive(Clone, Debug)]
pub struct SeedCase {
    pub case: NewCase,
    pub expected: Status,
}

/// Builds `count` cases deterministically from `seed`, dated relative to
/// `today`. Case ids sort in creation order, so the first test of a person
/// with two is always the one texted.
pub fn generate(count: usize, seed: u64, today: Date) -> Vec<SeedCase> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cases = Vec::with_capacity(count);
    let mut numbers = 0usize;

    while cases.len() < count {
        let id = |n: usize| format!("case-{n:07}");
        let test_date = today - jiff::Span::new().days(rng.i64(1..=10));
        let symptom_date = rng.bool().then(|| test_date - jiff::Span::new().days(2));
        let test_type = if rng.bool() { "confirmed" } else { "likely" };
        let base = NewCase {
            case_id: id(cases.len()),
            phone: None,
            test_date: Some(test_date),
            symptom_date,
            test_type: Some(test_type.to_owned()),
        };
        let roll = rng.u32(0..100);

        let (phone, expected, case) = match roll {
            0..=61 => (
                phone(&mut numbers, rng.u8(0..80), &mut rng),
                Status::Sent,
                base,
            ),
            62..=69 => (
                phone(&mut numbers, rng.u8(80..90), &mut rng),
                Status::NotTextable,
                base,
            ),
            70..=73 => (
                phone(&mut numbers, rng.u8(90..97), &mut rng),
                Status::Sent,
                base,
            ),
            74..=75 => (
                phone(&mut numbers, rng.u8(97..100), &mut rng),
                Status::NotTextable,
                base,
            ),
            76..=80 => (
                IMPOSSIBLE[rng.usize(..IMPOSSIBLE.len())].to_owned(),
                Status::InvalidPhone,
                base,
            ),
            81..=83 => (
                phone(&mut numbers, rng.u8(0..80), &mut rng),
                Status::Rejected,
                NewCase {
                    test_date: None,
                    symptom_date: None,
                    ..base
                },
            ),
            84..=86 => (
                phone(&mut numbers, rng.u8(0..80), &mut rng),
                Status::Rejected,
                NewCase {
                    test_type: Some(["pcr-rapid", "POSITIVE", ""][rng.usize(..3)].to_owned()),
                    ..base
                },
            ),
            87 => (
                phone(&mut numbers, rng.u8(0..80), &mut rng),
                Status::Rejected,
                NewCase {
                    test_date: Some(today - jiff::Span::new().days(40)),
                    symptom_date: None,
                    ..base
                },
            ),
            _ => {
                // One person, two tests a few days apart, the number typed
                // differently each time: one text.
                if cases.len() + 2 > count {
                    continue;
                }
                let digits = next_number(&mut numbers, rng.u8(0..80));
                let first = NewCase {
                    phone: Some(format_number(&digits, rng.usize(..FORMATS.len()))),
                    ..base.clone()
                };
                cases.push(SeedCase {
                    case: first,
                    expected: Status::Sent,
                });
                let second = NewCase {
                    case_id: id(cases.len()),
                    phone: Some(format_number(&digits, rng.usize(..FORMATS.len()))),
                    test_date: Some(test_date + jiff::Span::new().days(rng.i64(0..=3))),
                    symptom_date: None,
                    test_type: Some("confirmed".to_owned()),
                };
                cases.push(SeedCase {
                    case: second,
                    expected: Status::Duplicate,
                });
                continue;
            }
        };
        cases.push(SeedCase {
            case: NewCase {
                phone: Some(phone),
                ..case
            },
            expected,
        });
    }
    cases
}

/// A fresh number whose last two digits are `ending` (which the Twilio
/// simulator reads as the line type), typed in a random format.
fn phone(numbers: &mut usize, ending: u8, rng: &mut fastrand::Rng) -> String {
    let digits = next_number(numbers, ending);
    format_number(&digits, rng.usize(..FORMATS.len()))
}

/// Ten digits, distinct for every call: area code, exchange and the first
/// two line digits come from a counter, the last two are `ending`.
fn next_number(numbers: &mut usize, ending: u8) -> String {
    let n = *numbers;
    *numbers += 1;
    let area = AREA_CODES[n % AREA_CODES.len()];
    let rest = n / AREA_CODES.len();
    // Exchanges 200-999, skipping the N11 service codes.
    let exchanges: Vec<u16> = (200..1000).filter(|e| e % 100 != 11).collect();
    let exchange = exchanges[(rest / 100) % exchanges.len()];
    let line = (rest % 100) * 100 + usize::from(ending);
    format!("{area}{exchange}{line:04}")
}

fn format_number(digits: &str, format: usize) -> String {
    let (area, exchange, line) = (&digits[..3], &digits[3..6], &digits[6..]);
    match FORMATS[format] {
        "plain" => digits.to_owned(),
        "dashed" => format!("({area}) {exchange}-{line}"),
        "international" => format!("+1 {area}-{exchange}-{line}"),
        _ => format!("1{digits}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use canotify_common::E164;
    use canotify_common::phone::Region;

    use super::*;

    fn today() -> Date {
        "2026-12-03".parse().unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_cases() {
        let a = generate(500, 7, today());
        let b = generate(500, 7, today());

        assert_eq!(a.len(), 500);
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.case == y.case && x.expected == y.expected)
        );
    }

    #[test]
    fn every_kind_of_row_appears_in_a_thousand_cases() {
        let cases = generate(1000, 1, today());
        let kinds: HashSet<Status> = cases.iter().map(|c| c.expected).collect();

        for status in [
            Status::Sent,
            Status::NotTextable,
            Status::InvalidPhone,
            Status::Rejected,
            Status::Duplicate,
        ] {
            assert!(kinds.contains(&status), "{status}");
        }
        assert!(cases.iter().any(|c| c.case.test_date.is_none()));
        assert!(
            cases
                .iter()
                .any(|c| c.case.phone.as_deref().is_some_and(|p| p.starts_with('(')))
        );
        assert!(cases.iter().any(|c| {
            c.case
                .phone
                .as_deref()
                .is_some_and(|p| p.starts_with("+1 "))
        }));
    }

    #[test]
    fn only_duplicates_share_a_phone_and_valid_phones_normalise() {
        let cases = generate(3000, 3, today());
        let mut owners: HashMap<String, Vec<Status>> = HashMap::new();

        for case in &cases {
            let raw = case.case.phone.as_deref().unwrap_or("");
            match E164::normalize(raw, Region::US) {
                Ok(phone) => owners
                    .entry(phone.as_str().to_owned())
                    .or_default()
                    .push(case.expected),
                Err(_) => assert_eq!(case.expected, Status::InvalidPhone, "{}", case.case.case_id),
            }
        }

        for statuses in owners.values().filter(|s| s.len() > 1) {
            assert_eq!(statuses, &vec![Status::Sent, Status::Duplicate]);
        }
    }

    #[test]
    fn case_ids_are_unique_and_sorted() {
        let cases = generate(2000, 5, today());
        let ids: Vec<&str> = cases.iter().map(|c| c.case.case_id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();

        assert_eq!(ids, sorted);
    }
}
