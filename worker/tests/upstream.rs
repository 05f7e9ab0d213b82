//! The worker's core against simulators that misbehave the way real
//! upstreams do: 500s, HTML pages, bodies that are not JSON, truncated JSON,
//! a `codes` array of the wrong length, a 200 carrying an error code, a
//! timeout or a dropped connection after the codes were sent. Whatever the
//! fault, a case is recorded sent only if it was, and nobody gets a second
//! text.

use std::collections::HashMap;
use std::time::Duration;

use canotify_common::{CaseId, CheckRequest, Status};
use canotify_simulators::faults::Fault;
use canotify_simulators::{twilio, verification};
use canotify_worker::{Disposition, Gate, Incoming, Worker, WorkerConfig};
use clap::Parser;

struct Rig {
    worker: Worker,
    twilio: twilio::TwilioSimulator,
    verification: verification::VerificationSimulator,
}

async fn rig() -> Rig {
    let (twilio, verification) = canotify_simulators::start_local().await.unwrap();
    Rig {
        worker: worker_for(&twilio, &verification),
        twilio,
        verification,
    }
}

/// A fresh worker, with an empty memory, calling these simulators.
fn worker_for(
    twilio: &twilio::TwilioSimulator,
    verification: &verification::VerificationSimulator,
) -> Worker {
    let config = WorkerConfig::try_parse_from([
        "canotify-worker",
        "--twilio-url",
        &twilio.url(),
        "--twilio-account-sid",
        &twilio::TwilioConfig::default().account_sid,
        "--twilio-auth-token",
        &twilio::TwilioConfig::default().auth_token,
        "--verification-url",
        &verification.url(),
        "--verification-api-key",
        &verification::VerificationConfig::default().api_key,
        "--uuid-key",
        "upstream-test-uuid-key",
        "--http-timeout",
        "1s",
        "--retry-delays",
        "1s,1s",
    ])
    .unwrap();
    config.build_worker().unwrap()
}

fn cases(tag: &str, count: u32) -> Vec<Incoming> {
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    (0..count)
        .map(|n| {
            Incoming::first(CheckRequest {
                case_id: CaseId::new(format!("{tag}-{n}")).unwrap(),
                phone: Some(format!("(916) 4{:02}-{:04}", n % 90 + 10, n % 80)),
                test_date: Some(today - jiff::Span::new().days(1)),
                symptom_date: None,
                test_type: Some("confirmed".to_owned()),
            })
        })
        .collect()
}

/// Every case recorded sent has exactly one SMS under its uuid, and every
/// SMS belongs to a case recorded sent.
fn assert_sent_only_if_texted(dispositions: &[Disposition], rig: &Rig) -> usize {
    let mut per_uuid: HashMap<String, usize> = HashMap::new();
    for sms in rig.verification.ledger() {
        *per_uuid.entry(sms.uuid).or_default() += 1;
    }
    let mut sent = 0;
    for disposition in dispositions {
        if let Disposition::Done(result) = disposition
            && result.status == Status::Sent
        {
            sent += 1;
            let uuid = result.verification_uuid.as_deref().unwrap();
            assert_eq!(per_uuid.get(uuid), Some(&1), "{}", result.case_id);
        }
    }
    assert_eq!(
        per_uuid.len(),
        sent,
        "an SMS went to a case not recorded sent"
    );
    assert!(
        per_uuid.values().all(|&n| n == 1),
        "someone was texted twice"
    );
    sent
}

#[tokio::test]
async fn every_verification_fault_ends_with_each_case_sent_exactly_once() {
    let faults = [
        ("server_error", Fault::ServerError),
        ("html", Fault::HtmlErrorPage),
        ("not_json", Fault::NotJson),
        ("truncated", Fault::TruncatedJson),
        ("short_codes", Fault::WrongLengthCodes),
        ("error_in_200", Fault::ErrorCodeIn200),
        ("issue_then_500", Fault::IssueThenServerError),
        ("timeout", Fault::Delay(Duration::from_secs(2))),
        ("dropped", Fault::DropConnection),
    ];
    for (tag, fault) in faults {
        let rig = rig().await;
        rig.verification.inject(fault, Some(1));

        let dispositions = rig.worker.handle_batch(cases(tag, 10)).await;

        let sent = assert_sent_only_if_texted(&dispositions, &rig);
        assert_eq!(sent, 10, "{tag}: {dispositions:?}");
        rig.twilio.shutdown().await;
        rig.verification.shutdown().await;
    }
}

#[tokio::test]
async fn after_an_ambiguous_failure_the_worker_asks_for_the_code_before_issuing_again() {
    let rig = rig().await;
    rig.verification
        .inject(Fault::IssueThenServerError, Some(1));

    let dispositions = rig.worker.handle_batch(cases("ambiguous", 4)).await;

    assert_sent_only_if_texted(&dispositions, &rig);
    assert_eq!(rig.verification.checkcodestatus_calls(), 4);
    assert!(dispositions.iter().all(|d| matches!(d,
        Disposition::Done(r) if r.reason.as_deref() == Some("confirmed_by_status"))));
    // One batch call that texted, then none: the status answers sufficed.
    assert_eq!(rig.verification.requests(), 1);
}

#[tokio::test]
async fn a_fault_that_outlasts_the_in_process_retries_sends_the_case_round_again_unsent() {
    let rig = rig().await;
    rig.verification.inject(Fault::ServerError, None);

    let dispositions = rig.worker.handle_batch(cases("outlasting", 3)).await;

    assert!(rig.verification.ledger().is_empty());
    for disposition in &dispositions {
        let Disposition::Retry(retry) = disposition else {
            panic!("expected a retry, got {disposition:?}");
        };
        assert_eq!(retry.attempt, 1);
        assert!(
            retry.known_textable,
            "the lookup answer travels with the retry"
        );
        assert!(retry.ambiguous, "a 500 may have issued the code");
    }
}

#[tokio::test]
async fn every_twilio_fault_is_retried_and_ends_with_each_case_sent_once() {
    let faults = [
        ("t_server_error", Fault::ServerError),
        ("t_html", Fault::HtmlErrorPage),
        ("t_not_json", Fault::NotJson),
        ("t_truncated", Fault::TruncatedJson),
        ("t_busy", Fault::TooManyRequests),
        ("t_timeout", Fault::Delay(Duration::from_secs(2))),
        ("t_dropped", Fault::DropConnection),
    ];
    for (tag, fault) in faults {
        let rig = rig().await;
        rig.twilio.inject(fault, Some(2));

        let dispositions = rig.worker.handle_batch(cases(tag, 5)).await;

        assert_eq!(
            assert_sent_only_if_texted(&dispositions, &rig),
            5,
            "{tag}: {dispositions:?}"
        );
        rig.twilio.shutdown().await;
        rig.verification.shutdown().await;
    }
}

#[tokio::test]
async fn a_401_from_either_upstream_shuts_the_gate_and_holds_every_case() {
    for upstream in ["twilio", "verification"] {
        let rig = rig().await;
        match upstream {
            "twilio" => rig.twilio.inject(Fault::Unauthorized, None),
            _ => rig.verification.inject(Fault::Unauthorized, None),
        }

        let dispositions = rig.worker.handle_batch(cases(upstream, 5)).await;

        assert!(
            dispositions.iter().all(|d| *d == Disposition::Hold),
            "{upstream}: {dispositions:?}"
        );
        assert!(
            matches!(&*rig.worker.gate().borrow(), Gate::Stopped(_)),
            "{upstream}"
        );
        assert!(rig.verification.ledger().is_empty());
    }
}

#[tokio::test]
async fn a_retried_case_that_was_found_textable_costs_no_second_lookup() {
    let rig = rig().await;
    let mut case = cases("known", 1).pop().unwrap();
    case.attempt = 2;
    case.known_textable = true;

    let dispositions = rig.worker.handle_batch(vec![case]).await;

    assert_eq!(assert_sent_only_if_texted(&dispositions, &rig), 1);
    assert_eq!(rig.twilio.paid_lookups(), 0);
}

#[tokio::test]
async fn a_spent_quota_holds_the_case_and_shows_in_the_metrics() {
    let rig = rig().await;
    rig.verification.set_daily_quota(Some(0));

    let dispositions = rig.worker.handle_batch(cases("quota", 3)).await;
    let metrics = rig.worker.metrics().render();

    assert!(
        dispositions.iter().all(|d| *d == Disposition::Hold),
        "{dispositions:?}"
    );
    assert!(matches!(&*rig.worker.gate().borrow(), Gate::Paused { .. }));
    assert!(
        metrics.contains("canotify_quota_exceeded_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("canotify_gate_shut 1"), "{metrics}");
}

#[tokio::test]
async fn a_case_redelivered_to_another_worker_pays_for_no_second_lookup() {
    let url = canotify_common::Secret::new("postgres://postgres@127.0.0.1:5432/test");
    let schema = format!("lookup_cache_{}", std::process::id());
    let key = canotify_common::Secret::new("upstream-test-uuid-key");
    let shared = || {
        canotify_worker::shared_cache::SharedLookupCache::new(
            &url,
            &schema,
            &key,
            Duration::from_secs(3600),
        )
        .unwrap()
    };
    let first = rig().await;
    let first_worker = first.worker.with_shared_cache(shared());
    let case = cases("shared", 1);

    first_worker.handle_batch(case.clone()).await;
    // Another replica, with an empty memory, gets the same case again.
    let second = worker_for(&first.twilio, &first.verification).with_shared_cache(shared());
    let dispositions = second.handle_batch(case).await;
    let paid = first.twilio.paid_lookups();
    let texts = first.verification.ledger().len();
    let (client, connection) = tokio_postgres::connect(url.expose(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();

    assert_eq!(paid, 1, "the second worker paid for the lookup again");
    assert_eq!(texts, 1);
    assert!(matches!(&dispositions[0], Disposition::Done(r) if r.status == Status::Sent));
}

#[tokio::test]
async fn a_lookup_cache_that_never_answers_is_tried_once_and_holds_no_case_up() {
    // A database address that accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    let cache = canotify_worker::shared_cache::SharedLookupCache::new(
        &canotify_common::Secret::new(format!("postgres://postgres@{address}/test")),
        "silent",
        &canotify_common::Secret::new("upstream-test-uuid-key"),
        Duration::from_secs(3600),
    )
    .unwrap();
    let rig = rig().await;
    let worker = worker_for(&rig.twilio, &rig.verification).with_shared_cache(cache);

    // Three batches of ten; a cache connection that hung would hold the
    // first one up for good.
    let dispositions = tokio::time::timeout(
        Duration::from_secs(60),
        worker.handle_batch(cases("silent", 30)),
    )
    .await
    .expect("the silent lookup cache held the cases up");

    assert_eq!(assert_sent_only_if_texted(&dispositions, &rig), 30);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}
