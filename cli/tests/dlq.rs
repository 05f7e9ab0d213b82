//! `canotify dlq` and `canotify status` on the machine's RabbitMQ and
//! PostgreSQL: what inspecting leaves untouched, what requeue and purge
//! move or remove and what they leave, what is never printed, and the
//! figures `status` reads.

mod support;

use std::io::Cursor;
use std::time::{Duration, Instant};

use canotify_cli::dlq::{self, BodyView, Confirm, DeadLetters, DlqError, Letter, Moved, Selection};
use canotify_cli::status::{self, QueueStatus};
use canotify_common::broker::{
    self, ATTEMPTS_HEADER, FIRST_FAILURE_HEADER, LAST_FAILURE_HEADER, Outgoing, REASON_HEADER,
    REQUEUED_HEADER, STAGE_HEADER, Topology,
};
use canotify_common::config::{BrokerArgs, WarehouseArgs};
use canotify_common::phone::Region;
use canotify_common::phone::mask;
use canotify_common::warehouse::{ClaimRequest, NewCase, Warehouse};
use canotify_common::{CaseId, CaseResult, CheckRequest, Secret, Status};
use clap::Parser;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use support::{AMQP_URL, DATABASE_URL, Pipeline, mobile_case};

/// The longest any broker round trip here may take before the test fails.
const LIMIT: Duration = Duration::from_secs(10);

/// A phone, a test date and a test type no output may ever contain.
const PHONE: &str = "(916) 555-0123";
const TEST_DATE: &str = "2020-03-15";
const SYMPTOM_DATE: &str = "2020-03-12";
const TEST_TYPE: &str = "likely";

/// The flags an operator would give, read the way `canotify` reads them.
#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    broker: BrokerArgs,

    #[command(flatten)]
    warehouse: WarehouseArgs,
}

fn flags(pipeline: &Pipeline) -> Flags {
    Flags::try_parse_from([
        "canotify",
        "--amqp-url",
        AMQP_URL,
        "--queue-prefix",
        &pipeline.prefix,
        "--queue-type",
        "quorum",
        "--database-url",
        DATABASE_URL,
        "--schema",
        &pipeline.schema,
    ])
    .unwrap()
}

fn broker_args(pipeline: &Pipeline) -> BrokerArgs {
    flags(pipeline).broker
}

async fn dead_letters(pipeline: &Pipeline) -> DeadLetters {
    DeadLetters::connect(&broker_args(pipeline)).await.unwrap()
}

fn check_body(case_id: &str) -> Vec<u8> {
    let request = CheckRequest {
        case_id: CaseId::new(case_id).unwrap(),
        phone: Some(PHONE.to_owned()),
        test_date: Some(TEST_DATE.parse().unwrap()),
        symptom_date: Some(SYMPTOM_DATE.parse().unwrap()),
        test_type: Some(TEST_TYPE.to_owned()),
    };
    serde_json::to_vec(&request).unwrap()
}

fn attempts_header(attempts: u32) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongUInt(attempts));
    headers
}

/// A case message the worker gave up on, as the worker dead-letters it.
fn check_letter(topology: &Topology, case_id: &str, reason: &str, attempts: u32) -> Outgoing {
    topology.dead_letter(
        &check_body(case_id),
        Some(&attempts_header(attempts)),
        &topology.checks(),
        "worker",
        reason,
    )
}

/// A result the writer gave up on, as the writer dead-letters it.
fn result_letter(topology: &Topology, case_id: &str, reason: &str, attempts: u32) -> Outgoing {
    let result = CaseResult::new(CaseId::new(case_id).unwrap(), Status::Failed, attempts);
    topology.dead_letter(
        &serde_json::to_vec(&result).unwrap(),
        Some(&attempts_header(attempts)),
        &topology.results(),
        "writer",
        reason,
    )
}

/// An `x-death` header as the broker writes it, for a letter that was
/// dead-lettered by the broker once before canotify republished it.
fn earlier_death(topology: &Topology) -> AMQPValue {
    let mut entry = FieldTable::default();
    entry.insert("count".into(), AMQPValue::LongLongInt(1));
    entry.insert("reason".into(), AMQPValue::LongString("rejected".into()));
    entry.insert(
        "queue".into(),
        AMQPValue::LongString(topology.checks().into()),
    );
    entry.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
    entry.insert(
        "exchange".into(),
        AMQPValue::LongString(topology.dead_letter_exchange().into()),
    );
    let keys = FieldArray::from(vec![AMQPValue::LongString(topology.checks().into())]);
    entry.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
    AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)]))
}

/// Takes every message of a queue for good (acked on delivery).
async fn drain(queue: &str) -> Vec<Delivery> {
    let connection = broker::connect(&Secret::new(AMQP_URL), "test-drain")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        taken.push(message.delivery);
    }
    let _ = connection.close(200, "".into()).await;
    taken
}

/// Seeds cases with distinct phones, claims them as the producer does and
/// records them failed as the writer does: the warehouse's side of the
/// letters a test requeues.
async fn failed_cases(pipeline: &Pipeline, ids: &[&str]) {
    let cases: Vec<NewCase> = (0u32..)
        .zip(ids)
        .map(|(n, id)| mobile_case(id, n, 1))
        .collect();
    pipeline.seed(&cases).await;
    claim_everything(pipeline).await;
    let failed: Vec<CaseResult> = ids
        .iter()
        .map(|id| {
            CaseResult::new(CaseId::new(*id).unwrap(), Status::Failed, 3)
                .with_reason("sms_queue_full")
        })
        .collect();
    pipeline.warehouse.record_outcomes(&failed).await.unwrap();
}

async fn claim_everything(pipeline: &Pipeline) {
    pipeline
        .warehouse
        .claim_page(&ClaimRequest {
            after: None,
            limit: 1000,
            claim_age: Duration::from_secs(3600),
            window_days: 14,
            region: Region::US,
        })
        .await
        .unwrap();
}

fn ids_of(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default()
        })
        .collect()
}

fn listed_ids(letters: &[Letter]) -> Vec<&str> {
    letters.iter().map(|l| l.id.as_str()).collect()
}

fn headers_of(delivery: &Delivery) -> FieldTable {
    delivery.properties.headers().clone().unwrap_or_default()
}

/// Publishes a case message to the checks queue and rejects it without
/// requeue, so the broker itself dead-letters it; waits until it arrives.
async fn rejected_by_the_broker(pipeline: &Pipeline, case_id: &str) {
    let checks = pipeline.topology.checks();
    let dead_before = pipeline.depth(&pipeline.topology.dead()).await;
    let message = Outgoing {
        queue: checks.clone(),
        body: check_body(case_id),
        headers: FieldTable::default(),
        message_id: Some(case_id.to_owned()),
    };
    pipeline.publish(vec![message]).await;

    let connection = broker::connect(&Secret::new(AMQP_URL), "test-reject")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(checks.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the case message just published");
    message
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let _ = connection.close(200, "".into()).await;

    // Quorum queues dead-letter asynchronously.
    let started = Instant::now();
    while pipeline.depth(&pipeline.topology.dead()).await == dead_before {
        assert!(
            started.elapsed() < LIMIT,
            "the broker never dead-lettered it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn listing_letters_does_not_consume_or_reorder_them_and_spends_no_delivery_attempt() {
    let pipeline = Pipeline::new("dlq_list").await;
    let topology = &pipeline.topology.clone();
    let mut published = vec![
        check_letter(topology, "a", "unreadable_message", 3),
        result_letter(topology, "b", "warehouse_refused", 1),
        check_letter(topology, "c", "unreadable_message", 0),
        check_letter(topology, "d", "unreadable_message", 7),
    ];
    published[2]
        .headers
        .insert("x-death".into(), earlier_death(topology));
    pipeline.publish(published.clone()).await;
    rejected_by_the_broker(&pipeline, "e").await;

    let dead = dead_letters(&pipeline).await;
    let first = dead.list().await.unwrap();
    let second = dead.list().await.unwrap();
    dead.close().await;
    let left = drain(&topology.dead()).await;
    pipeline.cleanup().await;

    assert_eq!(first.count, 5);
    assert_eq!(listed_ids(&first.letters), ["a", "b", "c", "d", "e"]);
    assert_eq!(first.letters, second.letters);
    assert_eq!(ids_of(&left), ["a", "b", "c", "d", "e"]);
    for (delivery, sent) in left.iter().zip(&published) {
        assert_eq!(
            headers_of(delivery),
            sent.headers,
            "letter {:?}",
            sent.message_id
        );
        assert_eq!(delivery.data, sent.body);
    }
    let broker_letter = headers_of(&left[4]);
    let Some(AMQPValue::FieldArray(deaths)) = broker_letter.inner().get("x-death") else {
        panic!("the broker's letter keeps its x-death");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("x-death holds a table");
    };
    assert_eq!(death.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
    for delivery in &left {
        assert!(
            !headers_of(delivery).contains_key("x-delivery-count"),
            "a delivery attempt was counted"
        );
    }
}

#[tokio::test]
async fn requeue_by_id_moves_only_that_letter_back_to_its_source_queue_with_attempts_reset_and_the_requeue_header()
 {
    let pipeline = Pipeline::new("dlq_requeue_id").await;
    let topology = &pipeline.topology.clone();
    let b = result_letter(topology, "b", "warehouse_refused", 2);
    pipeline
        .publish(vec![
            check_letter(topology, "a", "unreadable_message", 3),
            b.clone(),
            check_letter(topology, "c", "unreadable_message", 1),
        ])
        .await;

    let dead = dead_letters(&pipeline).await;
    let report = dead
        .requeue(
            &Selection::Ids(vec!["b".to_owned()]),
            &pipeline.warehouse,
            14,
        )
        .await
        .unwrap();
    dead.close().await;
    let results = drain(&topology.results()).await;
    let checks = drain(&topology.checks()).await;
    let left = drain(&topology.dead()).await;
    pipeline.cleanup().await;

    assert_eq!(
        report.requeued,
        [Moved {
            id: "b".to_owned(),
            to: topology.results()
        }]
    );
    assert!(report.is_complete());
    assert_eq!(report.remaining, 2);

    assert_eq!(results.len(), 1);
    let copy = &results[0];
    let headers = headers_of(copy);
    assert_eq!(copy.data, b.body);
    assert_eq!(ids_of(&results), ["b"]);
    assert_eq!(
        headers.inner().get(ATTEMPTS_HEADER),
        Some(&AMQPValue::LongUInt(0))
    );
    let requeued_at = broker::header_str(Some(&headers), REQUEUED_HEADER).unwrap();
    assert!(requeued_at.parse::<jiff::Timestamp>().is_ok());
    for gone in [
        REASON_HEADER,
        STAGE_HEADER,
        FIRST_FAILURE_HEADER,
        LAST_FAILURE_HEADER,
    ] {
        assert!(!headers.contains_key(gone), "{gone} is still set");
    }

    assert!(checks.is_empty());
    assert_eq!(ids_of(&left), ["a", "c"]);
    assert_eq!(broker::attempts(&left[0].properties), 3);
}

#[tokio::test]
async fn requeue_by_reason_moves_every_letter_of_that_reason_and_no_other() {
    let pipeline = Pipeline::new("dlq_requeue_reason").await;
    let topology = &pipeline.topology.clone();
    pipeline
        .publish(vec![
            check_letter(topology, "a", "unreadable_message", 1),
            result_letter(topology, "b", "warehouse_refused", 1),
            check_letter(topology, "c", "unreadable_message", 1),
            result_letter(topology, "d", "warehouse_refused", 1),
        ])
        .await;
    failed_cases(&pipeline, &["a", "c"]).await;

    let dead = dead_letters(&pipeline).await;
    let report = dead
        .requeue(
            &Selection::Reason("unreadable_message".to_owned()),
            &pipeline.warehouse,
            14,
        )
        .await
        .unwrap();
    dead.close().await;
    let checks = drain(&topology.checks()).await;
    let results = drain(&topology.results()).await;
    let left = drain(&topology.dead()).await;
    pipeline.cleanup().await;

    let moved: Vec<&str> = report.requeued.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(moved, ["a", "c"]);
    assert_eq!(ids_of(&checks), ["a", "c"]);
    assert!(results.is_empty());
    assert_eq!(ids_of(&left), ["b", "d"]);
}

#[tokio::test]
async fn requeue_leaves_a_letter_with_no_known_source_queue_where_it_is() {
    let pipeline = Pipeline::new("dlq_requeue_nosource").await;
    let topology = &pipeline.topology.clone();
    let junk = Outgoing {
        queue: topology.dead(),
        body: b"not json at all".to_vec(),
        headers: FieldTable::default(),
        message_id: None,
    };
    pipeline
        .publish(vec![
            junk,
            check_letter(topology, "a", "unreadable_message", 1),
        ])
        .await;
    failed_cases(&pipeline, &["a"]).await;

    let dead = dead_letters(&pipeline).await;
    let report = dead
        .requeue(&Selection::All, &pipeline.warehouse, 14)
        .await
        .unwrap();
    dead.close().await;
    let checks = drain(&topology.checks()).await;
    let left = drain(&topology.dead()).await;
    pipeline.cleanup().await;

    let junk_id = dlq::body_id(b"not json at all");
    assert!(!report.is_complete());
    assert_eq!(report.left.len(), 1);
    assert_eq!(report.left[0].id, junk_id);
    assert!(dlq::render_requeue(&report).contains("no source queue"));
    assert_eq!(ids_of(&checks), ["a"]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].data, b"not json at all");
}

#[tokio::test]
async fn requeue_records_duplicate_a_case_whose_person_was_texted_meanwhile_and_sends_no_copy() {
    let pipeline = Pipeline::new("dlq_requeue_person").await;
    let topology = &pipeline.topology.clone();
    // Two tests of one person: the first ran out of attempts, then the
    // second was claimed and texted.
    let first = mobile_case("first", 7, 2);
    let second = NewCase {
        case_id: "second".to_owned(),
        test_date: first.test_date.map(|d| d.tomorrow().unwrap()),
        ..first.clone()
    };
    pipeline.seed(&[first, second]).await;
    claim_everything(&pipeline).await;
    let failed = CaseResult::new(CaseId::new("first").unwrap(), Status::Failed, 3)
        .with_reason("sms_queue_full");
    pipeline.warehouse.record_outcomes(&[failed]).await.unwrap();
    claim_everything(&pipeline).await;
    let sent = CaseResult::new(CaseId::new("second").unwrap(), Status::Sent, 1).with_uuid("u");
    pipeline.warehouse.record_outcomes(&[sent]).await.unwrap();
    // A third person's case, alone, goes back as usual; a letter whose
    // case the warehouse does not know stays.
    failed_cases(&pipeline, &["alone"]).await;
    pipeline
        .publish(vec![
            check_letter(topology, "first", "sms_queue_full", 3),
            check_letter(topology, "alone", "sms_queue_full", 3),
            check_letter(topology, "stranger", "sms_queue_full", 3),
        ])
        .await;

    let dead = dead_letters(&pipeline).await;
    let report = dead
        .requeue(&Selection::All, &pipeline.warehouse, 14)
        .await
        .unwrap();
    dead.close().await;
    let checks = drain(&topology.checks()).await;
    let left = drain(&topology.dead()).await;
    let outcomes = pipeline.outcomes().await;
    pipeline.cleanup().await;

    assert_eq!(report.recorded_duplicate.len(), 1, "{report:?}");
    let recorded = &report.recorded_duplicate[0];
    assert_eq!(
        (recorded.case_id.as_str(), recorded.duplicate_of.as_str()),
        ("first", "second")
    );
    assert_eq!(ids_of(&checks), ["alone"]);
    assert_eq!(ids_of(&left), ["stranger"]);
    assert_eq!(report.remaining, 1);
    assert!(!report.is_complete());
    assert!(
        report.left[0].why.contains("CANOTIFY_SCHEMA"),
        "{:?}",
        report.left
    );
    let text = dlq::render_requeue(&report);
    assert!(
        text.contains("case first is a duplicate of case second"),
        "{text}"
    );

    let status_of = |id: &str| {
        let row = outcomes.iter().find(|o| o.case_id == id).unwrap();
        (row.status.clone(), row.duplicate_of.clone())
    };
    assert_eq!(
        status_of("first"),
        ("duplicate".to_owned(), Some("second".to_owned()))
    );
    assert_eq!(status_of("alone"), ("queued".to_owned(), None));
}

#[tokio::test]
async fn purge_with_yes_removes_only_the_selected_ones() {
    let pipeline = Pipeline::new("dlq_purge_yes").await;
    let topology = &pipeline.topology.clone();
    let published = vec![
        check_letter(topology, "a", "unreadable_message", 1),
        check_letter(topology, "b", "unreadable_message", 1),
        check_letter(topology, "c", "unreadable_message", 1),
        check_letter(topology, "d", "unreadable_message", 1),
    ];
    pipeline.publish(published.clone()).await;

    let dead = dead_letters(&pipeline).await;
    let selection = Selection::Ids(vec!["b".to_owned(), "d".to_owned(), "zz".to_owned()]);
    let report = dead.purge(&selection, Confirm::Yes).await.unwrap();
    dead.close().await;
    let left = drain(&topology.dead()).await;
    let checks = drain(&topology.checks()).await;
    pipeline.cleanup().await;

    assert_eq!(report.purged, ["b", "d"]);
    assert_eq!(report.not_found, ["zz"]);
    assert_eq!(report.remaining, 2);
    assert_eq!(ids_of(&left), ["a", "c"]);
    assert_eq!(headers_of(&left[0]), published[0].headers);
    assert_eq!(headers_of(&left[1]), published[2].headers);
    assert!(checks.is_empty(), "a purge moves nothing anywhere");
}

#[tokio::test]
async fn purge_without_yes_and_without_yes_typed_removes_nothing() {
    let pipeline = Pipeline::new("dlq_purge_ask").await;
    let topology = &pipeline.topology.clone();
    pipeline
        .publish(vec![
            check_letter(topology, "a", "unreadable_message", 1),
            check_letter(topology, "b", "unreadable_message", 1),
        ])
        .await;

    let dead = dead_letters(&pipeline).await;
    let mut prompts = Vec::new();
    for answer in ["no\n", "y\n", ""] {
        let mut input = Cursor::new(answer.as_bytes());
        let mut prompt = Vec::new();
        let refused = dead
            .purge(
                &Selection::All,
                Confirm::Ask {
                    input: &mut input,
                    prompt: &mut prompt,
                },
            )
            .await;
        assert!(
            matches!(refused, Err(DlqError::NotConfirmed)),
            "answer {answer:?} gave {refused:?}"
        );
        prompts.push(String::from_utf8(prompt).unwrap());
    }
    let listing = dead.list().await.unwrap();
    dead.close().await;
    let left = drain(&topology.dead()).await;
    pipeline.cleanup().await;

    assert!(
        prompts.iter().all(|p| p.contains("type yes")),
        "{prompts:?}"
    );
    assert_eq!(listing.count, 2);
    assert_eq!(ids_of(&left), ["a", "b"]);
}

#[tokio::test]
async fn purge_goes_ahead_when_yes_is_typed() {
    let pipeline = Pipeline::new("dlq_purge_typed").await;
    let topology = &pipeline.topology.clone();
    pipeline
        .publish(vec![
            check_letter(topology, "a", "unreadable_message", 1),
            result_letter(topology, "b", "warehouse_refused", 1),
        ])
        .await;

    let dead = dead_letters(&pipeline).await;
    let mut input = Cursor::new(b"yes\n".as_slice());
    let mut prompt = Vec::new();
    let report = dead
        .purge(
            &Selection::Reason("warehouse_refused".to_owned()),
            Confirm::Ask {
                input: &mut input,
                prompt: &mut prompt,
            },
        )
        .await
        .unwrap();
    dead.close().await;
    let left = drain(&topology.dead()).await;
    pipeline.cleanup().await;

    assert_eq!(report.purged, ["b"]);
    assert_eq!(ids_of(&left), ["a"]);
}

#[tokio::test]
async fn show_masks_the_phone_and_prints_no_dates_or_test_type() {
    let pipeline = Pipeline::new("dlq_show").await;
    let topology = &pipeline.topology.clone();
    let junk_body = b"+19165550123 test 2020-03-15 likely".to_vec();
    let junk = Outgoing {
        queue: topology.dead(),
        body: junk_body.clone(),
        headers: FieldTable::default(),
        message_id: None,
    };
    // The same case given up twice: `show` shows both.
    pipeline
        .publish(vec![
            check_letter(topology, "a", "unreadable_message", 1),
            check_letter(topology, "other", "unreadable_message", 1),
            check_letter(topology, "a", "unreadable_message", 2),
            junk,
        ])
        .await;

    let dead = dead_letters(&pipeline).await;
    let shown = dead.show("a").await.unwrap();
    let junk_shown = dead.show(&dlq::body_id(&junk_body)).await.unwrap();
    let listing = dead.list().await.unwrap();
    let missing = dead.show("nobody").await;
    dead.close().await;
    pipeline.cleanup().await;

    assert_eq!(shown.letters.len(), 2);
    assert_eq!(shown.letters[0].letter.attempts, Some(1));
    assert_eq!(shown.letters[1].letter.attempts, Some(2));
    assert_eq!(
        junk_shown.letters[0].body,
        BodyView::Opaque {
            bytes: junk_body.len()
        }
    );
    assert!(matches!(missing, Err(DlqError::NotFound(_))));

    let outputs = [
        dlq::render_show(&shown),
        serde_json::to_string(&shown).unwrap(),
        dlq::render_show(&junk_shown),
        serde_json::to_string(&junk_shown).unwrap(),
        dlq::render_list(&listing),
        serde_json::to_string(&listing).unwrap(),
    ];
    for output in &outputs {
        for secret in [
            PHONE,
            "555-0123",
            "5550123",
            TEST_DATE,
            SYMPTOM_DATE,
            TEST_TYPE,
        ] {
            assert!(!output.contains(secret), "{secret:?} printed in:\n{output}");
        }
    }
    assert!(outputs[0].contains(&mask(PHONE)));
    assert!(outputs[4].contains(&mask(PHONE)));
}

#[tokio::test]
async fn a_letter_the_broker_dead_lettered_itself_is_listed_with_its_source_queue_and_reason_from_x_death()
 {
    let pipeline = Pipeline::new("dlq_broker").await;
    let topology = pipeline.topology.clone();
    rejected_by_the_broker(&pipeline, "k1").await;
    failed_cases(&pipeline, &["k1"]).await;

    let dead = dead_letters(&pipeline).await;
    let listing = dead.list().await.unwrap();
    let report = dead
        .requeue(
            &Selection::Ids(vec!["k1".to_owned()]),
            &pipeline.warehouse,
            14,
        )
        .await
        .unwrap();
    dead.close().await;
    let checks = drain(&topology.checks()).await;
    let left = drain(&topology.dead()).await;
    pipeline.cleanup().await;

    assert_eq!(listing.count, 1);
    let letter = &listing.letters[0];
    assert_eq!(letter.id, "k1");
    assert_eq!(letter.source_queue, Some(topology.checks()));
    assert_eq!(letter.reason.as_deref(), Some("rejected"));
    assert_eq!(letter.stage, None);
    assert_eq!(letter.attempts, Some(1));
    assert!(letter.first_failure.is_some() && letter.last_failure.is_some());
    assert_eq!(letter.phone_masked, Some(mask(PHONE)));
    assert!(dlq::render_list(&listing).contains("rejected"));

    assert_eq!(report.requeued.len(), 1);
    assert_eq!(ids_of(&checks), ["k1"]);
    assert!(left.is_empty());
}

#[tokio::test]
async fn status_reports_depth_and_consumers_of_every_queue_and_the_outcome_counts() {
    let pipeline = Pipeline::new("status").await;
    let topology = &pipeline.topology.clone();
    let cases: Vec<_> = (0..5)
        .map(|n| mobile_case(&format!("s{n}"), n, 1))
        .collect();
    pipeline.seed(&cases).await;
    let sent = |id: &str| CaseResult::new(CaseId::new(id).unwrap(), Status::Sent, 1);
    let failed = CaseResult::new(CaseId::new("s2").unwrap(), Status::Failed, 3);
    pipeline
        .warehouse
        .record_outcomes(&[sent("s0"), sent("s1"), failed])
        .await
        .unwrap();
    let checks: Vec<Outgoing> = (0..3)
        .map(|n| Outgoing::json(&topology.checks(), &format!("check {n}")))
        .collect();
    pipeline.publish(checks).await;
    pipeline
        .publish(vec![check_letter(topology, "s3", "unreadable_message", 1)])
        .await;

    // A consumer on the results queue, held while `status` reads.
    let connection = broker::connect(&Secret::new(AMQP_URL), "test-consumer")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _consumer = channel
        .basic_consume(
            topology.results().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let Flags { broker, warehouse } = flags(&pipeline);
    let report = status::gather(&broker, &warehouse).await.unwrap();
    let _ = connection.close(200, "".into()).await;
    pipeline.cleanup().await;

    let listed: Vec<&str> = report.queues.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(listed, broker.topology().unwrap().queues());
    let queue = |name: String| report.queues.iter().find(|q| q.queue == name).unwrap();
    let declared = |messages, consumers| (true, Some(messages), Some(consumers));
    let figures = |q: &QueueStatus| (q.declared, q.messages, q.consumers);
    assert_eq!(figures(queue(topology.checks())), declared(3, 0));
    assert_eq!(figures(queue(topology.results())), declared(0, 1));
    assert_eq!(figures(queue(topology.dead())), declared(1, 0));
    assert_eq!(report.outcomes.pending, 2);
    assert_eq!(report.outcomes.by_status["sent"], 2);
    assert_eq!(report.outcomes.by_status["failed"], 1);
    assert_eq!(report.outcomes.by_status["queued"], 0);
    let text = status::render(&report);
    assert!(text.contains(&topology.checks()) && text.contains("sent"));
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    let results = json["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == topology.results().as_str())
        .unwrap();
    assert_eq!(results["consumers"], 1);
    assert_eq!(json["outcomes"]["pending"], 2);
}

#[tokio::test]
async fn status_says_which_queues_are_not_declared() {
    let pipeline = Pipeline::new("status_missing").await;
    let Flags { broker, warehouse } = flags(&pipeline);

    let report = status::gather(&broker, &warehouse).await.unwrap();
    pipeline.cleanup().await;

    assert_eq!(
        report.queues.len(),
        broker.topology().unwrap().queues().len()
    );
    assert!(
        report
            .queues
            .iter()
            .all(|q| !q.declared && q.messages.is_none())
    );
    assert!(status::render(&report).contains("not declared"));
}

#[tokio::test]
async fn dlq_commands_on_a_prefix_with_no_dead_letter_queue_say_so() {
    let pipeline = Pipeline::new("dlq_missing").await;
    let queue = pipeline.topology.dead();

    let dead = dead_letters(&pipeline).await;
    let listed = dead.list().await;
    dead.close().await;
    pipeline.cleanup().await;

    let Err(err) = listed else {
        panic!("a missing queue cannot be listed");
    };
    assert!(matches!(err, DlqError::NotDeclared(_)));
    assert!(err.to_string().contains(&queue));
}
