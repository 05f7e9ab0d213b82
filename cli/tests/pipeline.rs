//! The pipeline end to end on the machine's RabbitMQ and PostgreSQL, with
//! the simulators standing in for Twilio and the verification server.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use canotify_cli::seed;
use canotify_common::Secret;
use canotify_common::broker::Outgoing;
use canotify_common::phone::Region;
use canotify_common::warehouse::{NewCase, OutcomeRow, Warehouse};
use canotify_common::{CaseId, CheckRequest, E164, Status, verification_uuid};
use support::{Pipeline, UUID_KEY, mobile_case};

const LIMIT: Duration = Duration::from_secs(90);

fn normalized(raw: Option<&str>) -> Option<String> {
    E164::normalize(raw?, Region::US)
        .ok()
        .map(|p| p.as_str().to_owned())
}

fn uuid_of(case_id: &str) -> String {
    verification_uuid::derive(&Secret::new(UUID_KEY), &CaseId::new(case_id).unwrap())
}

fn check_message(queue: &str, case: &NewCase) -> Outgoing {
    let request = CheckRequest {
        case_id: CaseId::new(case.case_id.clone()).unwrap(),
        phone: case.phone.clone(),
        test_date: case.test_date,
        symptom_date: case.symptom_date,
        test_type: case.test_type.clone(),
    };
    Outgoing::json(queue, &request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_cases_of_every_kind_reach_their_expected_status_and_each_sent_case_is_texted_once()
{
    let mut pipeline = Pipeline::new("e2e").await;
    let seeded = seed::generate(400, 11, seed::today_utc());
    pipeline
        .seed(&seeded.iter().map(|s| s.case.clone()).collect::<Vec<_>>())
        .await;

    pipeline.start(2);
    let counts = pipeline.wait_resolved(LIMIT).await;
    let outcomes = pipeline.outcomes().await;
    let ledger = pipeline.verification.ledger();
    let lookups = pipeline.twilio.lookups_by_phone();
    pipeline.cleanup().await;

    // Every case reached the status its kind calls for.
    let status: HashMap<&str, &str> = outcomes
        .iter()
        .map(|o| (o.case_id.as_str(), o.status.as_str()))
        .collect();
    for case in &seeded {
        assert_eq!(
            status.get(case.case.case_id.as_str()).copied(),
            Some(case.expected.as_str()),
            "case {}",
            case.case.case_id
        );
    }
    assert_eq!(counts.total(), 400);

    // Every sent case has exactly one SMS, under its own uuid, to its phone.
    let mut per_uuid: HashMap<&str, usize> = HashMap::new();
    for sms in &ledger {
        *per_uuid.entry(sms.uuid.as_str()).or_default() += 1;
    }
    let sent: Vec<_> = seeded
        .iter()
        .filter(|c| c.expected == Status::Sent)
        .collect();
    assert_eq!(ledger.len(), sent.len());
    for case in &sent {
        assert_eq!(
            per_uuid.get(uuid_of(&case.case.case_id).as_str()),
            Some(&1),
            "case {}",
            case.case.case_id
        );
    }

    // Nobody with an impossible or untextable number was texted, and no paid
    // lookup was spent on a case refused for its number or test type.
    let texted: HashSet<&str> = ledger.iter().map(|s| s.phone.as_str()).collect();
    for case in &seeded {
        let phone = normalized(case.case.phone.as_deref());
        match case.expected {
            Status::InvalidPhone | Status::NotTextable => {
                assert!(
                    phone.as_deref().is_none_or(|p| !texted.contains(p)),
                    "case {}",
                    case.case.case_id
                );
            }
            Status::Rejected
                if case
                    .case
                    .test_type
                    .as_deref()
                    .is_some_and(|t| t != "confirmed" && t != "likely") =>
            {
                assert!(
                    !lookups.contains_key(phone.as_deref().unwrap()),
                    "case {}",
                    case.case.case_id
                );
            }
            _ => {}
        }
    }
    assert!(
        lookups.values().all(|&n| n == 1),
        "a phone was looked up twice: {lookups:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivering_every_case_message_changes_no_outcome_and_sends_no_second_sms() {
    let mut pipeline = Pipeline::new("redeliver").await;
    let seeded = seed::generate(150, 12, seed::today_utc());
    let cases: Vec<NewCase> = seeded.iter().map(|s| s.case.clone()).collect();
    pipeline.seed(&cases).await;
    pipeline.start(2);
    pipeline.wait_resolved(LIMIT).await;
    let before = pipeline.outcomes().await;
    let sms_before = pipeline.verification.ledger().len();

    // Every message the producer published comes again (duplicates were
    // recorded at claim time and never published).
    let duplicates: HashSet<&str> = before
        .iter()
        .filter(|o| o.status == "duplicate")
        .map(|o| o.case_id.as_str())
        .collect();
    let checks = pipeline.topology.checks();
    let messages = cases
        .iter()
        .filter(|c| !duplicates.contains(c.case_id.as_str()))
        .map(|c| check_message(&checks, c))
        .collect();
    pipeline.publish(messages).await;
    pipeline.wait_queues_drained(LIMIT).await;
    let after = pipeline.outcomes().await;
    let sms_after = pipeline.verification.ledger().len();
    pipeline.cleanup().await;

    let view = |rows: &[OutcomeRow]| -> Vec<(String, String, Option<String>, Option<String>)> {
        rows.iter()
            .map(|o| {
                (
                    o.case_id.clone(),
                    o.status.clone(),
                    o.reason.clone(),
                    o.verification_uuid.clone(),
                )
            })
            .collect()
    };
    assert!(sms_before > 50);
    assert_eq!(sms_after, sms_before, "a redelivery texted someone again");
    assert_eq!(view(&after), view(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partially_failed_batch_records_the_others_sent_and_not_the_failed_ones() {
    let mut pipeline = Pipeline::new("partial").await;
    pipeline.set_retry_delays("100ms");
    let cases: Vec<NewCase> = (0..10)
        .map(|n| mobile_case(&format!("p{n:02}"), n, 2))
        .collect();
    pipeline.seed(&cases).await;
    let phone = |n: usize| normalized(cases[n].phone.as_deref()).unwrap();
    pipeline
        .verification
        .fail_phone(&phone(2), "internal_server_error");
    pipeline
        .verification
        .fail_phone(&phone(5), "sms_queue_full");
    pipeline.verification.fail_phone(&phone(7), "sms_failure");

    pipeline.start_writer();
    pipeline.start_worker(&["--batch-linger", "1s"]);
    pipeline.start_producer(&[]);
    pipeline.wait_resolved(LIMIT).await;
    let outcomes = pipeline.outcomes().await;
    let ledger = pipeline.verification.ledger();
    pipeline.cleanup().await;

    let by_id: HashMap<&str, &OutcomeRow> =
        outcomes.iter().map(|o| (o.case_id.as_str(), o)).collect();
    for (n, case) in cases.iter().enumerate() {
        let outcome = by_id[case.case_id.as_str()];
        let (status, reason) = match n {
            2 => ("failed", Some("internal_server_error")),
            5 => ("failed", Some("sms_queue_full")),
            7 => ("rejected", Some("sms_failure")),
            _ => ("sent", None),
        };
        assert_eq!(
            (outcome.status.as_str(), outcome.reason.as_deref()),
            (status, reason),
            "case {n}"
        );
        if status == "failed" {
            assert_eq!(outcome.attempts, 2, "case {n} used every attempt");
        }
    }
    let texted: HashSet<&str> = ledger.iter().map(|s| s.phone.as_str()).collect();
    assert_eq!(ledger.len(), 7);
    for n in [2, 5, 7] {
        assert!(!texted.contains(phone(n).as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_cases_of_one_person_in_flight_at_once_get_one_text() {
    let mut pipeline = Pipeline::new("oneperson").await;
    let formats = [
        "9165550142",
        "(916) 555-0142",
        "+1 916-555-0142",
        "19165550142",
    ];
    let mut cases = Vec::new();
    for person in 0..20u32 {
        let digits = format!("{:04}", 100 + person);
        for (test, days_ago) in [(0, 3), (1, 1)] {
            let raw = formats[(person as usize + test) % 4].replace("0142", &digits);
            cases.push(NewCase {
                case_id: format!("person{person:02}-test{test}"),
                phone: Some(raw),
                test_date: Some(seed::today_utc() - jiff::Span::new().days(days_ago)),
                symptom_date: None,
                test_type: Some(if test == 0 { "confirmed" } else { "likely" }.to_owned()),
            });
        }
    }
    // One more person tested twice 20 days apart: two infections, two texts.
    for (test, days_ago) in [(0, 22), (1, 2)] {
        cases.push(NewCase {
            case_id: format!("reinfected-test{test}"),
            phone: Some("9165550977".to_owned()),
            test_date: Some(seed::today_utc() - jiff::Span::new().days(days_ago)),
            symptom_date: None,
            test_type: Some("confirmed".to_owned()),
        });
    }
    pipeline.seed(&cases).await;

    // Two producers and three workers all at once.
    pipeline.start_writer();
    for _ in 0..3 {
        pipeline.start_worker(&[]);
    }
    pipeline.start_producer(&[]);
    pipeline.start_producer(&[]);
    pipeline.wait_resolved(LIMIT).await;
    let outcomes = pipeline.outcomes().await;
    let ledger = pipeline.verification.ledger();
    pipeline.cleanup().await;

    let mut texts: HashMap<&str, usize> = HashMap::new();
    for sms in &ledger {
        *texts.entry(sms.phone.as_str()).or_default() += 1;
    }
    assert_eq!(texts.len(), 21);
    assert_eq!(texts["+19165550977"], 2);
    assert!(
        texts
            .iter()
            .filter(|(p, _)| **p != "+19165550977")
            .all(|(_, n)| *n == 1),
        "{texts:?}"
    );

    let by_id: HashMap<&str, _> = outcomes.iter().map(|o| (o.case_id.as_str(), o)).collect();
    for person in 0..20 {
        let first = by_id[format!("person{person:02}-test0").as_str()];
        let second = by_id[format!("person{person:02}-test1").as_str()];
        assert_eq!(first.status, "sent");
        assert_eq!(second.status, "duplicate");
        assert_eq!(second.duplicate_of.as_deref(), Some(first.case_id.as_str()));
    }
    assert_eq!(by_id["reinfected-test0"].status, "sent");
    assert_eq!(by_id["reinfected-test1"].status, "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_producers_at_once_never_publish_the_same_case_twice() {
    let pipeline = Pipeline::new("twoproducers").await;
    let cases: Vec<NewCase> = (0..1500)
        .map(|n| mobile_case(&format!("c{n:05}"), n, 1))
        .collect();
    pipeline.seed(&cases).await;

    let runs = (0..2).map(|_| {
        let config = pipeline.producer_config(&["--once", "--page-size", "100"]);
        tokio::spawn(canotify_producer::run(
            config,
            canotify_common::Shutdown::new().1,
        ))
    });
    for run in futures_util::future::join_all(runs).await {
        run.unwrap().unwrap();
    }
    let queued = pipeline.depth(&pipeline.topology.checks()).await;
    let counts = pipeline.warehouse.outcome_counts().await.unwrap();
    pipeline.cleanup().await;

    assert_eq!(queued, 1500);
    assert_eq!(counts.get(Status::Queued), 1500);
    assert_eq!(counts.pending, 0);
}
