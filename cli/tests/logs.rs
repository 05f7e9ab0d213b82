//! No health data in any log: the whole pipeline, as real processes with
//! debug logging, over seeded cases, and not one seeded phone number (in
//! any format), test date or test type field in any line any process wrote.

use std::path::Path;
use std::process::Command;

use canotify_cli::seed;
use canotify_common::E164;
use canotify_common::phone::Region;

#[test]
fn debug_logs_of_every_process_hold_no_phone_number_and_no_test_date() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_canotify")).parent().unwrap();
    for name in ["canotify-producer", "canotify-worker", "canotify-writer"] {
        assert!(
            bin_dir.join(name).is_file(),
            "{name} is not built; run the tests of the whole workspace"
        );
    }
    let logs = tempfile::tempdir().unwrap();

    let demo = Command::new(env!("CARGO_BIN_EXE_canotify"))
        .args(["demo", "--cases", "300", "--workers", "2", "--seed", "7"])
        .args(["--child-log", "debug"])
        .arg("--log-dir")
        .arg(logs.path())
        .arg("--bin-dir")
        .arg(bin_dir)
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );

    // The demo seeds the same cases for the same seed and day.
    let cases = seed::generate(300, 7, seed::today_utc());
    let mut needles: Vec<String> = Vec::new();
    for case in &cases {
        if let Some(raw) = case.case.phone.as_deref().filter(|p| p.len() >= 7) {
            needles.push(raw.to_owned());
        }
        if let Some(phone) = case
            .case
            .phone
            .as_deref()
            .and_then(|p| E164::normalize(p, Region::US).ok())
        {
            needles.push(phone.as_str().to_owned());
            needles.push(phone.as_str()[2..].to_owned());
        }
        for date in [case.case.test_date, case.case.symptom_date]
            .into_iter()
            .flatten()
        {
            needles.push(date.to_string());
        }
    }
    needles.push("test_type".to_owned());
    needles.sort();
    needles.dedup();

    let mut lines = 0;
    for entry in std::fs::read_dir(logs.path()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            lines += 1;
            // Each line opens with its own timestamp, which may hold a date
            // that is also some case's test date.
            let line = line.split_once(' ').map_or(line, |(_, rest)| rest);
            for needle in &needles {
                assert!(
                    !line.contains(needle.as_str()),
                    "{} logged {needle:?}: {line}",
                    path.display()
                );
            }
        }
    }
    assert!(lines > 300, "debug logging wrote only {lines} lines");
}
