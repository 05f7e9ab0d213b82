//! Faults the pipeline must survive with nothing lost and nobody texted
//! twice: the broker connection cut, the database away, poison messages,
//! hostile rows, refused credentials, a spent quota, flaky upstreams. Each
//! runs on its own queues and schema, bounded in time.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use canotify_cli::proxy::Proxy;
use canotify_cli::seed;
use canotify_common::Secret;
use canotify_common::Status;
use canotify_common::broker::{self, Outgoing, REASON_HEADER, STAGE_HEADER, header_str};
use canotify_common::warehouse::{NewCase, OutcomeRow, Warehouse};
use lapin::options::BasicGetOptions;
use support::{AMQP_URL, Pipeline, mobile_case};

const LIMIT: Duration = Duration::from_secs(120);

/// Every sent case has exactly one SMS under its uuid, and no SMS belongs
/// to a case that is not sent.
fn assert_one_sms_per_sent_case(
    outcomes: &[OutcomeRow],
    ledger: &[canotify_simulators::verification::SmsRecord],
) {
    let mut per_uuid: HashMap<&str, usize> = HashMap::new();
    for sms in ledger {
        *per_uuid.entry(sms.uuid.as_str()).or_default() += 1;
    }
    let sent: Vec<&OutcomeRow> = outcomes.iter().filter(|o| o.status == "sent").collect();
    for case in &sent {
        let uuid = case
            .verification_uuid
            .as_deref()
            .expect("a sent case has its uuid");
        assert_eq!(per_uuid.get(uuid), Some(&1), "case {}", case.case_id);
    }
    assert_eq!(
        ledger.len(),
        sent.len(),
        "an SMS went to a case not recorded sent"
    );
}

fn mobiles(prefix: &str, count: u32) -> Vec<NewCase> {
    (0..count)
        .map(|n| mobile_case(&format!("{prefix}{n:05}"), n, 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutting_the_broker_connection_twice_loses_nothing_and_texts_nobody_twice() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap())
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("brokercut").await;
    pipeline.route_broker_through(proxy.addr().port());
    pipeline.seed(&mobiles("b", 1000)).await;
    pipeline
        .verification
        .set_latency(Duration::from_millis(100));

    pipeline.start(2);
    for threshold in [150, 500] {
        pipeline
            .wait_for("SMS to go out", LIMIT, async |p| {
                p.verification.ledger().len() >= threshold
            })
            .await;
        proxy.cut();
    }
    let counts = pipeline.wait_resolved(LIMIT).await;
    let outcomes = pipeline.outcomes().await;
    let ledger = pipeline.verification.ledger();
    pipeline.cleanup().await;

    assert_eq!(proxy.cuts(), 2);
    assert_eq!(counts.get(Status::Sent), 1000);
    assert_one_sms_per_sent_case(&outcomes, &ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_away_for_a_while_under_the_producer_and_writer_loses_nothing() {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap())
        .await
        .unwrap();
    let mut pipeline = Pipeline::new("dbaway").await;
    pipeline.route_database_through(proxy.addr().port());
    let first = mobiles("d", 300);
    pipeline.seed(&first[..150]).await;
    pipeline.verification.set_latency(Duration::from_millis(50));

    pipeline.start(2);
    pipeline
        .wait_for("SMS to go out", LIMIT, async |p| {
            p.verification.ledger().len() >= 50
        })
        .await;
    proxy.set_refusing(true);
    proxy.cut();
    // While the database is away more cases arrive, and results pile up.
    pipeline.seed(&first[150..]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_refusing(false);
    let counts = pipeline.wait_resolved(LIMIT).await;
    let outcomes = pipeline.outcomes().await;
    let ledger = pipeline.verification.ledger();
    pipeline.cleanup().await;

    assert_eq!(counts.get(Status::Sent), 300);
    assert_one_sms_per_sent_case(&outcomes, &ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_messages_become_dead_letters_with_a_reason_and_the_pipeline_goes_on() {
    let mut pipeline = Pipeline::new("poison").await;
    pipeline.seed(&mobiles("ok", 5)).await;
    pipeline.start(1);
    let checks = pipeline.topology.checks();
    let results = pipeline.topology.results();
    let raw = |queue: &str, body: Vec<u8>| Outgoing {
        queue: queue.to_owned(),
        body,
        headers: Default::default(),
        message_id: None,
    };

    pipeline
        .publish(vec![
            raw(&checks, b"not json at all".to_vec()),
            raw(&checks, br#"{"case_id": 5, "phone": []}"#.to_vec()),
            raw(&checks, vec![b'x'; 1024 * 1024]),
            raw(&results, b"<html><body>502</body></html>".to_vec()),
            raw(
                &results,
                br#"{"case_id":"ok00001","status":"exploded"}"#.to_vec(),
            ),
        ])
        .await;
    let dead = pipeline.topology.dead();
    pipeline
        .wait_for("five dead letters", LIMIT, async |p| {
            p.depth(&dead).await == 5
        })
        .await;
    let counts = pipeline.wait_resolved(LIMIT).await;
    let letters = read_letters(&dead, 5).await;
    pipeline.cleanup().await;

    assert_eq!(counts.get(Status::Sent), 5);
    let mut stages: Vec<&str> = letters.iter().map(|(stage, _)| stage.as_str()).collect();
    stages.sort();
    assert_eq!(stages, ["worker", "worker", "worker", "writer", "writer"]);
    assert!(
        letters
            .iter()
            .all(|(_, reason)| reason == "unreadable_message")
    );
}

/// Reads (without removing for good) the stage and reason of `n` letters.
async fn read_letters(queue: &str, n: usize) -> Vec<(String, String)> {
    let connection = broker::connect(&Secret::new(AMQP_URL), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut letters = Vec::new();
    for _ in 0..n {
        let message = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a dead letter");
        let headers = message.delivery.properties.headers().as_ref();
        letters.push((
            header_str(headers, STAGE_HEADER)
                .unwrap_or_default()
                .to_owned(),
            header_str(headers, REASON_HEADER)
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    let _ = connection.close(200, "".into()).await;
    letters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_rows_get_a_recorded_outcome_with_a_clear_reason() {
    let mut pipeline = Pipeline::new("badrows").await;
    let today = seed::today_utc();
    let row = |id: &str,
               phone: Option<&str>,
               test_date: Option<jiff::civil::Date>,
               test_type: Option<&str>| NewCase {
        case_id: id.to_owned(),
        phone: phone.map(str::to_owned),
        test_date,
        symptom_date: None,
        test_type: test_type.map(str::to_owned),
    };
    let recent = Some(today - jiff::Span::new().days(1));
    let long_phone = "9".repeat(200);
    let cases = vec![
        row("letters", Some("916-555-CALL"), recent, Some("confirmed")),
        row("long", Some(&long_phone), recent, Some("confirmed")),
        row("nophone", None, recent, Some("confirmed")),
        row("notype", Some("9165550101"), recent, None),
        row("nodates", Some("9165550102"), None, Some("confirmed")),
        row(
            "future",
            Some("9165550103"),
            Some(today + jiff::Span::new().days(5)),
            Some("confirmed"),
        ),
        row("antigen", Some("9165550104"), recent, Some("antigen")),
        row(
            "sql",
            Some("'; DROP TABLE cases; --"),
            recent,
            Some("confirmed"),
        ),
        row(
            "invisible",
            Some("\u{200B}(916) 555-0105\u{FEFF}"),
            recent,
            Some("confirmed"),
        ),
        row("nothing", None, None, None),
    ];
    pipeline.seed(&cases).await;

    pipeline.start(1);
    pipeline.wait_resolved(LIMIT).await;
    let outcomes = pipeline.outcomes().await;
    let ledger = pipeline.verification.ledger();
    pipeline.cleanup().await;

    let got: HashMap<&str, (&str, Option<&str>)> = outcomes
        .iter()
        .map(|o| (o.case_id.as_str(), (o.status.as_str(), o.reason.as_deref())))
        .collect();
    let expected = [
        ("letters", ("invalid_phone", Some("phone_not_a_number"))),
        ("long", ("invalid_phone", Some("phone_too_long"))),
        ("nophone", ("invalid_phone", Some("phone_missing"))),
        ("notype", ("rejected", Some("invalid_test_type"))),
        ("nodates", ("rejected", Some("missing_date"))),
        ("future", ("rejected", Some("invalid_date"))),
        ("antigen", ("rejected", Some("invalid_test_type"))),
        ("sql", ("invalid_phone", Some("phone_not_a_number"))),
        ("invisible", ("sent", None)),
        ("nothing", ("invalid_phone", Some("phone_missing"))),
    ];
    for (id, outcome) in expected {
        assert_eq!(got.get(id), Some(&outcome), "case {id}");
    }
    assert_eq!(ledger.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_twilio_credentials_stop_the_worker_and_keep_every_case_queued() {
    let mut pipeline = Pipeline::new("unauthorized").await;
    pipeline.seed(&mobiles("u", 30)).await;

    pipeline.start_writer();
    pipeline.start_worker(&["--twilio-auth-token", "wrong-token"]);
    pipeline.start_producer(&[]);
    let checks = pipeline.topology.checks();
    pipeline
        .wait_for("every case back in the queue", LIMIT, async |p| {
            p.depth(&checks).await == 30
                && p.warehouse
                    .outcome_counts()
                    .await
                    .unwrap()
                    .get(Status::Queued)
                    == 30
        })
        .await;
    // It stays that way: the worker does not take the cases again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let depth = pipeline.depth(&checks).await;
    let ends = pipeline.stop_all().await;
    let lookups = pipeline.twilio.paid_lookups();
    let sms = pipeline.verification.ledger().len();
    pipeline.cleanup().await;

    assert_eq!(depth, 30);
    assert_eq!((lookups, sms), (0, 0));
    let worker = ends.iter().find(|(what, _)| what == "worker").unwrap();
    let error = worker.1.as_ref().unwrap_err();
    assert!(error.contains("CANOTIFY_TWILIO_AUTH_TOKEN"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spent_daily_quota_pauses_issuing_and_fails_nobody() {
    let mut pipeline = Pipeline::new("quota").await;
    pipeline.seed(&mobiles("q", 40)).await;
    pipeline.verification.set_daily_quota(Some(12));

    pipeline.start_writer();
    pipeline.start_worker(&["--quota-pause", "1h"]);
    pipeline.start_producer(&[]);
    let checks = pipeline.topology.checks();
    pipeline
        .wait_for("the rest to wait in the queue", LIMIT, async |p| {
            let counts = p.warehouse.outcome_counts().await.unwrap();
            counts.get(Status::Sent) == 12 && p.depth(&checks).await == 28
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = pipeline.warehouse.outcome_counts().await.unwrap();
    let depth = pipeline.depth(&checks).await;
    pipeline.cleanup().await;

    assert_eq!(counts.get(Status::Sent), 12);
    assert_eq!(counts.get(Status::Failed), 0);
    assert_eq!(counts.get(Status::Queued), 28);
    assert_eq!(depth, 28);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flaky_upstreams_are_retried_until_sent_and_each_phone_is_looked_up_once() {
    let mut pipeline = Pipeline::new("flaky").await;
    pipeline.set_retry_delays("50ms,50ms,50ms,50ms,50ms");
    pipeline.seed(&mobiles("f", 200)).await;
    pipeline.twilio.set_error_rate(0.3);
    pipeline.verification.set_item_error_rate(0.3);

    pipeline.start(2);
    let counts = pipeline.wait_resolved(LIMIT).await;
    let outcomes = pipeline.outcomes().await;
    let ledger = pipeline.verification.ledger();
    let lookups = pipeline.twilio.lookups_by_phone();
    pipeline.cleanup().await;

    assert_eq!(counts.get(Status::Sent), 200);
    assert_one_sms_per_sent_case(&outcomes, &ledger);
    assert_eq!(lookups.len(), 200);
    assert!(lookups.values().all(|&n| n == 1), "{lookups:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_case_failing_every_attempt_is_recorded_failed_and_dead_lettered() {
    let mut pipeline = Pipeline::new("giveup").await;
    pipeline.set_retry_delays("50ms,50ms");
    let cases = mobiles("g", 3);
    pipeline.seed(&cases).await;
    let phone = canotify_common::E164::normalize(
        cases[1].phone.as_deref().unwrap(),
        canotify_common::phone::Region::US,
    )
    .unwrap();
    pipeline
        .verification
        .fail_phone(phone.as_str(), "sms_queue_full");

    pipeline.start(1);
    let dead = pipeline.topology.dead();
    pipeline.wait_resolved(LIMIT).await;
    pipeline
        .wait_for("the dead letter", LIMIT, async |p| {
            p.depth(&dead).await == 1
        })
        .await;
    let outcomes = pipeline.outcomes().await;
    let letters = read_letters(&dead, 1).await;
    pipeline.cleanup().await;

    let failed = outcomes
        .iter()
        .find(|o| o.case_id == cases[1].case_id)
        .unwrap();
    assert_eq!(
        (
            failed.status.as_str(),
            failed.reason.as_deref(),
            failed.attempts
        ),
        ("failed", Some("sms_queue_full"), 3)
    );
    assert_eq!(
        letters,
        vec![("worker".to_owned(), "sms_queue_full".to_owned())]
    );
    assert_eq!(outcomes.iter().filter(|o| o.status == "sent").count(), 2);
}
