//! The worker binary as a real process on the machine's RabbitMQ, with the
//! simulators in this test: killed with SIGKILL in the middle of a batch it
//! loses nothing and texts nobody twice; stopped with SIGTERM it finishes or
//! gives back what it holds and exits 0.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use canotify_common::broker::{self, Outgoing, Publisher, Topology};
use canotify_common::{CaseId, CaseResult, CheckRequest, Secret};
use canotify_simulators::{twilio, verification};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tokio::process::{Child, Command};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Rig {
    topology: Topology,
    twilio: twilio::TwilioSimulator,
    verification: verification::VerificationSimulator,
}

impl Rig {
    async fn new(name: &str) -> Self {
        let prefix = format!(
            "test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let topology = Topology::new(&prefix, broker::QueueType::Quorum)
            .unwrap()
            .with_retry_delays(&[Duration::from_millis(100)]);
        let (twilio, verification) = canotify_simulators::start_local().await.unwrap();
        Self {
            topology,
            twilio,
            verification,
        }
    }

    fn spawn_worker(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_canotify-worker"))
            .env("CANOTIFY_AMQP_URL", AMQP_URL)
            .env("CANOTIFY_QUEUE_PREFIX", self.topology.prefix())
            .env("CANOTIFY_RETRY_DELAYS", "100ms")
            .env("CANOTIFY_TWILIO_URL", self.twilio.url())
            .env(
                "CANOTIFY_TWILIO_ACCOUNT_SID",
                twilio::TwilioConfig::default().account_sid,
            )
            .env(
                "CANOTIFY_TWILIO_AUTH_TOKEN",
                twilio::TwilioConfig::default().auth_token,
            )
            .env("CANOTIFY_VERIFICATION_URL", self.verification.url())
            .env(
                "CANOTIFY_VERIFICATION_API_KEY",
                verification::VerificationConfig::default().api_key,
            )
            .env("CANOTIFY_UUID_KEY", "process-test-uuid-key")
            .env("CANOTIFY_BATCH_LINGER", "20ms")
            .env("CANOTIFY_SHUTDOWN_GRACE", "20s")
            .env("CANOTIFY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the worker binary is built with the tests")
    }

    /// Publishes `count` textable cases on the checks queue.
    async fn publish_cases(&self, count: u32) -> Vec<String> {
        let connection = broker::connect(&Secret::new(AMQP_URL), "test")
            .await
            .unwrap();
        let publisher = Publisher::new(&connection).await.unwrap();
        self.topology.declare(publisher.channel()).await.unwrap();
        let today = jiff::Timestamp::now()
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .date();
        let ids: Vec<String> = (0..count).map(|n| format!("k{n:05}")).collect();
        let messages = ids
            .iter()
            .enumerate()
            .map(|(n, id)| {
                let request = CheckRequest {
                    case_id: CaseId::new(id.clone()).unwrap(),
                    phone: Some(format!("916{:03}{:04}", 300 + n / 80, n % 80)),
                    test_date: Some(today - jiff::Span::new().days(1)),
                    symptom_date: None,
                    test_type: Some("confirmed".to_owned()),
                };
                Outgoing::json(&self.topology.checks(), &request)
            })
            .collect();
        for confirm in publisher.publish_all(messages).await {
            confirm.unwrap();
        }
        let _ = connection.close(200, "".into()).await;
        ids
    }

    /// Consumes results until every case in `ids` has one, or `limit` ends.
    async fn collect_results(
        &self,
        ids: &[String],
        limit: Duration,
    ) -> HashMap<String, Vec<CaseResult>> {
        let connection = broker::connect(&Secret::new(AMQP_URL), "test")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        self.topology.declare(&channel).await.unwrap();
        let mut consumer = channel
            .basic_consume(
                self.topology.results().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let wanted: HashSet<&String> = ids.iter().collect();
        let mut results: HashMap<String, Vec<CaseResult>> = HashMap::new();
        let deadline = Instant::now() + limit;
        while results.len() < wanted.len() && Instant::now() < deadline {
            let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
            else {
                continue;
            };
            let result: CaseResult = serde_json::from_slice(&delivery.data).unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            results
                .entry(result.case_id.as_str().to_owned())
                .or_default()
                .push(result);
        }
        let _ = connection.close(200, "".into()).await;
        results
    }

    async fn cleanup(self) {
        if let Ok(connection) = broker::connect(&Secret::new(AMQP_URL), "test").await {
            if let Ok(channel) = connection.create_channel().await {
                let _ = self.topology.delete(&channel).await;
            }
            let _ = connection.close(200, "".into()).await;
        }
        self.twilio.shutdown().await;
        self.verification.shutdown().await;
    }
}

async fn wait_for_sms(rig: &Rig, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.verification.ledger().len() < at_least {
        assert!(Instant::now() < deadline, "no SMS went out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sms_per_uuid(rig: &Rig) -> HashMap<String, usize> {
    let mut per_uuid = HashMap::new();
    for sms in rig.verification.ledger() {
        *per_uuid.entry(sms.uuid).or_default() += 1;
    }
    per_uuid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_texts_nobody_twice() {
    let rig = Rig::new("sigkill").await;
    rig.verification.set_latency(Duration::from_millis(200));
    let ids = rig.publish_cases(300).await;

    let mut first = rig.spawn_worker();
    wait_for_sms(&rig, 40).await;
    first.kill().await.unwrap();
    let mut second = rig.spawn_worker();
    let results = rig.collect_results(&ids, Duration::from_secs(90)).await;
    second.kill().await.unwrap();
    let per_uuid = sms_per_uuid(&rig);
    let texted = rig.verification.ledger().len();
    rig.cleanup().await;

    assert_eq!(results.len(), 300, "a case was lost");
    assert!(
        results
            .values()
            .flatten()
            .all(|r| r.status == canotify_common::Status::Sent)
    );
    assert_eq!(per_uuid.len(), 300);
    assert!(
        per_uuid.values().all(|&n| n == 1),
        "someone was texted twice"
    );
    assert_eq!(texted, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_gives_back_what_is_in_flight_and_exits_0() {
    let rig = Rig::new("sigterm").await;
    rig.verification.set_latency(Duration::from_millis(200));
    let ids = rig.publish_cases(200).await;

    let mut first = rig.spawn_worker();
    wait_for_sms(&rig, 20).await;
    let pid = first.id().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(25), first.wait())
        .await
        .expect("the worker exits within its grace period")
        .unwrap();
    let mut second = rig.spawn_worker();
    let results = rig.collect_results(&ids, Duration::from_secs(90)).await;
    second.kill().await.unwrap();
    let per_uuid = sms_per_uuid(&rig);
    rig.cleanup().await;

    assert!(status.success(), "{status}");
    assert_eq!(results.len(), 200, "a case was lost");
    assert!(
        per_uuid.values().all(|&n| n == 1),
        "someone was texted twice"
    );
    // A case the first worker finished is not redone by the second.
    assert!(
        results.values().all(|r| r.len() == 1),
        "a finished case came back"
    );
}
