//! The consume loop around the worker's core: deliveries from the checks
//! queue go through `Worker::screen` one by one (no call leaves the
//! process); the candidates gather into batches of up to ten (or whatever
//! arrived within the linger) for `Worker::process`, which looks them up and
//! issues the textable ones. What became of each case is published with a confirm (a
//! result, a retry on a wait queue, or a result and a dead letter), and only
//! then is its delivery acked, so a crash anywhere means redelivery.
//!
//! While the worker's gate is shut (quota spent, credentials refused) the
//! loop cancels its consumer, so the cases wait in the queue for a worker
//! that can serve them, and consumes again once the gate opens.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use canotify_common::broker::{
    self, ATTEMPTS_HEADER, FIRST_FAILURE_HEADER, LAST_FAILURE_HEADER, Outgoing, Publisher,
    Topology, header_str,
};
use canotify_common::metrics::Metrics;
use canotify_common::{CheckRequest, Shutdown};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::core::{Candidate, Disposition, Gate, Incoming, Retry, Screened, Worker};
use crate::verification::MAX_BATCH;
use canotify_common::telemetry::Chain;

/// Set on a retried case whose number an earlier attempt found textable, so
/// the retry does not pay for a second lookup.
pub const TEXTABLE_HEADER: &str = "x-canotify-textable";

/// Set on a retried case whose last failure may have issued its code.
pub const AMBIGUOUS_HEADER: &str = "x-canotify-ambiguous";

/// The reason the last attempt of a retried case failed.
pub const LAST_REASON_HEADER: &str = "x-canotify-last-reason";

/// How long a worker whose gate shut waits for its cases in flight.
const GIVE_BACK_WAIT: Duration = Duration::from_secs(60);

/// How long in-flight cases may finish after the broker is lost.
const BROKER_LOST_GRACE: Duration = Duration::from_secs(2);

/// How often a worker recounts the consumers sharing the request rate.
const RATE_SHARE_REFRESH: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ConsumeOptions {
    pub prefetch: u16,
    pub linger: Duration,
    pub issue_concurrency: usize,
    /// How long in-flight cases may take to finish after shutdown is asked.
    pub shutdown_grace: Duration,
}

/// How a consume session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was asked for.
    Shutdown,
    /// The broker connection or channel failed; connect again.
    BrokerLost(lapin::Error),
}

/// Consumes on one connection until shutdown or until the broker is lost.
/// In-flight cases are finished (within the grace period) before it returns;
/// what was not started goes back to the queue.
pub async fn consume(
    worker: Arc<Worker>,
    connection: &Connection,
    topology: &Topology,
    options: &ConsumeOptions,
    shutdown: &Shutdown,
) -> Result<SessionEnd, lapin::Error> {
    let publisher = Publisher::new(connection).await?;
    topology.declare(publisher.channel()).await?;
    let settle = Settler {
        publisher,
        topology: topology.clone(),
        unsettled: Arc::new(AtomicUsize::new(0)),
        metrics: worker.metrics().clone(),
    };
    let (batch_tx, batch_rx) =
        mpsc::channel::<(Delivery, Candidate)>(usize::from(options.prefetch).max(MAX_BATCH));
    let batcher = tokio::spawn(batch_and_issue(
        worker.clone(),
        batch_rx,
        settle.clone(),
        options.clone(),
    ));
    let mut checks = JoinSet::new();
    let mut gate = worker.gate();

    // The channel outlives the loop, so in-flight cases can still ack on it
    // while they drain after shutdown.
    let mut channel: Option<Channel> = None;
    let end = 'session: loop {
        // Consume only while the gate is open.
        let wait = match &*gate.borrow_and_update() {
            Gate::Open => None,
            Gate::Paused { until } => Some(Some(*until)),
            Gate::Stopped(_) => Some(None),
        };
        if let Some(until) = wait {
            let reopened = async {
                match until {
                    Some(until) => tokio::time::sleep_until(until.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.requested() => break 'session SessionEnd::Shutdown,
                _ = reopened => {
                    info!("issuing pause over; consuming again");
                    worker.reopen_after_pause();
                    continue 'session;
                }
            }
        }

        // A channel per round of consuming: closing it when the gate shuts
        // gives back every delivery this worker holds, read or not.
        let channel = match open_consume_channel(connection, options.prefetch).await {
            Ok(opened) => channel.insert(opened),
            Err(err) => break 'session SessionEnd::BrokerLost(err),
        };
        // An empty tag lets the broker name the consumer.
        let mut consumer = match channel
            .basic_consume(
                topology.checks().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(err) => break 'session SessionEnd::BrokerLost(err),
        };
        let tag = consumer.tag();
        share_request_rate(&worker, channel, topology).await;
        info!(queue = %topology.checks(), prefetch = options.prefetch, "worker consuming");
        let mut refresh = tokio::time::interval_at(
            tokio::time::Instant::now() + RATE_SHARE_REFRESH,
            RATE_SHARE_REFRESH,
        );

        let stop_consuming = loop {
            tokio::select! {
                _ = shutdown.requested() => break SessionEnd::Shutdown,
                changed = gate.changed() => {
                    if changed.is_ok() && !gate.borrow().is_open() {
                        warn!("gate shut; no longer consuming, and giving back the cases held");
                        cancel(channel, &tag).await;
                        give_back_held(&mut consumer, &settle, shutdown).await;
                        broker::close_channel(channel, "gate shut").await;
                        continue 'session;
                    }
                }
                _ = refresh.tick() => share_request_rate(&worker, channel, topology).await,
                next = consumer.next() => match next {
                    None => break SessionEnd::BrokerLost(lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed, "consumer").into()),
                    Some(Err(err)) => break SessionEnd::BrokerLost(err),
                    Some(Ok(delivery)) => {
                        settle.received();
                        let worker = worker.clone();
                        let settle = settle.clone();
                        let batch_tx = batch_tx.clone();
                        checks.spawn(async move {
                            screen_one(&worker, delivery, &settle, &batch_tx).await;
                        });
                    }
                }
            }
            // Reap finished checks so the set does not grow.
            while checks.try_join_next().is_some() {}
        };
        if matches!(stop_consuming, SessionEnd::Shutdown) {
            cancel(channel, &tag).await;
        }
        break stop_consuming;
    };

    // On shutdown, let what is in flight finish within the grace period.
    // With the broker lost, its acks cannot land anyway: the broker gives
    // every unacked case to another consumer, so waiting long gains nothing.
    let grace = match end {
        SessionEnd::Shutdown => options.shutdown_grace,
        SessionEnd::BrokerLost(_) => BROKER_LOST_GRACE,
    };
    let batcher_abort = batcher.abort_handle();
    let drain = async {
        while checks.join_next().await.is_some() {}
        drop(batch_tx);
        let _ = batcher.await;
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        warn!(
            ?grace,
            "in-flight cases did not finish in time; they will be redelivered"
        );
        batcher_abort.abort();
    }
    if let Some(channel) = channel {
        broker::close_channel(&channel, "worker stopping").await;
    }
    Ok(end)
}

/// Stops the broker delivering to this consumer, waiting for it at most
/// [`broker::CLOSE_WAIT`]: closing the channel afterwards stops it anyway.
async fn cancel(channel: &Channel, tag: &ShortString) {
    let cancelled = channel.basic_cancel(tag.clone(), BasicCancelOptions::default());
    if tokio::time::timeout(broker::CLOSE_WAIT, cancelled)
        .await
        .is_err()
    {
        warn!("the broker did not acknowledge cancelling the consumer; closing its channel");
    }
}

/// After the consumer is cancelled: gives back what it had prefetched, then
/// waits (a bounded time) for the cases in flight to settle, so closing the
/// channel afterwards requeues nothing that was already finished.
async fn give_back_held(consumer: &mut lapin::Consumer, settle: &Settler, shutdown: &Shutdown) {
    let deadline = tokio::time::Instant::now() + GIVE_BACK_WAIT;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        settle.received();
        settle.requeue(&delivery).await;
    }
    while settle.unsettled() > 0
        && tokio::time::Instant::now() < deadline
        && !shutdown.is_requested()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open_consume_channel(
    connection: &Connection,
    prefetch: u16,
) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    Ok(channel)
}

/// Counts the consumers of the checks queue and takes this worker's share
/// of the realm's request rate.
async fn share_request_rate(worker: &Worker, channel: &Channel, topology: &Topology) {
    if worker.settings().requests_per_minute.is_none() {
        return;
    }
    let declared = broker::inspect_queue(channel, &topology.checks()).await;
    if let Ok(queue) = declared {
        let consumers = queue.consumer_count().max(1);
        worker.share_request_rate(consumers);
        debug!(consumers, "request rate shared");
    }
}

/// Reads what an attempt should know from the delivery's headers.
fn incoming(request: CheckRequest, delivery: &Delivery) -> Incoming {
    let headers = delivery.properties.headers().as_ref();
    let flag = |name: &str| {
        headers
            .and_then(|h| h.inner().get(name))
            .is_some_and(|v| matches!(v, AMQPValue::Boolean(true)))
    };
    Incoming {
        attempt: broker::attempts(&delivery.properties) + 1,
        first_failure: header_str(headers, FIRST_FAILURE_HEADER).map(str::to_owned),
        known_textable: flag(TEXTABLE_HEADER),
        ambiguous: flag(AMBIGUOUS_HEADER),
        request,
    }
}

async fn screen_one(
    worker: &Worker,
    delivery: Delivery,
    settle: &Settler,
    batch_tx: &mpsc::Sender<(Delivery, Candidate)>,
) {
    let request: CheckRequest = match serde_json::from_slice(&delivery.data) {
        Ok(request) => request,
        Err(err) => {
            warn!(error = %Chain(&err), bytes = delivery.data.len(), "unreadable case message; dead-lettering it");
            settle.dead_letter(delivery, "unreadable_message").await;
            return;
        }
    };
    let span = info_span!("case", case_id = %request.case_id);
    let case = incoming(request, &delivery);

    async {
        match worker.screen(&case) {
            Screened::Finished(disposition) => settle.settle(vec![(delivery, disposition)]).await,
            Screened::Candidate(case) => {
                // The batcher is gone only during shutdown; the delivery then
                // goes back to the queue.
                if let Err(mpsc::error::SendError((delivery, _))) =
                    batch_tx.send((delivery, *case)).await
                {
                    settle.requeue(&delivery).await;
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Gathers textable cases into batches and issues them, a few batches at a
/// time.
async fn batch_and_issue(
    worker: Arc<Worker>,
    mut rx: mpsc::Receiver<(Delivery, Candidate)>,
    settle: Settler,
    options: ConsumeOptions,
) {
    let permits = Arc::new(Semaphore::new(options.issue_concurrency.max(1)));
    let mut issuing = JoinSet::new();

    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + options.linger;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }

        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let worker = worker.clone();
        let settle = settle.clone();
        issuing.spawn(async move {
            let _permit = permit;
            let (deliveries, cases): (Vec<Delivery>, Vec<Candidate>) = batch.into_iter().unzip();
            debug!(cases = cases.len(), "processing a batch");
            let dispositions = worker.process(cases).await;
            settle
                .settle(deliveries.into_iter().zip(dispositions).collect())
                .await;
        });
        while issuing.try_join_next().is_some() {}
    }
    while issuing.join_next().await.is_some() {}
}

/// Publishes what became of each case, then acks its delivery.
#[derive(Clone)]
struct Settler {
    publisher: Publisher,
    topology: Topology,
    /// Deliveries received and not yet acked or given back.
    unsettled: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Settler {
    async fn settle(&self, items: Vec<(Delivery, Disposition)>) {
        let mut messages = Vec::new();
        let mut owners = Vec::new();
        let mut held = Vec::new();
        for (index, (delivery, disposition)) in items.iter().enumerate() {
            let outgoing = self.messages_for(delivery, disposition);
            if outgoing.is_empty() {
                held.push(index);
            }
            owners.extend(std::iter::repeat_n(index, outgoing.len()));
            messages.extend(outgoing);
        }
        let confirms = self.publisher.publish_all(messages).await;

        // A delivery is acked only when every message it produced is
        // confirmed.
        let mut confirmed = vec![true; items.len()];
        for (owner, confirm) in owners.into_iter().zip(confirms) {
            if let Err(err) = confirm {
                warn!(error = %Chain(&err), "not confirmed by the broker; the case will be redelivered");
                confirmed[owner] = false;
            }
        }
        for (index, (delivery, disposition)) in items.into_iter().enumerate() {
            if held.contains(&index) || !confirmed[index] {
                self.requeue(&delivery).await;
            } else {
                log_settled(&disposition, &self.metrics);
                self.ack(&delivery).await;
            }
        }
    }

    fn messages_for(&self, delivery: &Delivery, disposition: &Disposition) -> Vec<Outgoing> {
        match disposition {
            Disposition::Hold => Vec::new(),
            Disposition::Done(result) => vec![
                Outgoing::json(&self.topology.results(), result)
                    .with_message_id(result.case_id.as_str()),
            ],
            Disposition::GiveUp(result) => {
                let mut letter = self.topology.dead_letter(
                    &delivery.data,
                    delivery.properties.headers().as_ref(),
                    &self.topology.checks(),
                    "worker",
                    result.reason.as_deref().unwrap_or("retries_exhausted"),
                );
                letter
                    .headers
                    .insert(ATTEMPTS_HEADER.into(), AMQPValue::LongUInt(result.attempts));
                vec![
                    Outgoing::json(&self.topology.results(), result)
                        .with_message_id(result.case_id.as_str()),
                    letter,
                ]
            }
            Disposition::Retry(retry) => vec![self.retry_message(retry)],
        }
    }

    /// The case again, on the wait queue of its attempt's delay.
    fn retry_message(&self, retry: &Retry) -> Outgoing {
        let delays = self.topology.retry_delays();
        let index = usize::try_from(retry.attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        let queue = delays.get(index).or(delays.last()).map_or_else(
            || self.topology.checks(),
            |delay| self.topology.wait_queue(*delay),
        );
        Outgoing::json(&queue, &retry.request)
            .with_message_id(retry.request.case_id.as_str())
            .with_header(ATTEMPTS_HEADER, AMQPValue::LongUInt(retry.attempt))
            .with_header(FIRST_FAILURE_HEADER, string(&retry.first_failure))
            .with_header(
                LAST_FAILURE_HEADER,
                string(&jiff::Timestamp::now().to_string()),
            )
            .with_header(LAST_REASON_HEADER, string(&retry.reason))
            .with_header(TEXTABLE_HEADER, AMQPValue::Boolean(retry.known_textable))
            .with_header(AMBIGUOUS_HEADER, AMQPValue::Boolean(retry.ambiguous))
    }

    /// Moves an unreadable message to the dead-letter queue with its reason.
    async fn dead_letter(&self, delivery: Delivery, reason: &str) {
        let letter = self.topology.dead_letter(
            &delivery.data,
            delivery.properties.headers().as_ref(),
            &self.topology.checks(),
            "worker",
            reason,
        );
        match self.publisher.publish(letter).await {
            Ok(()) => {
                self.metrics.dead_lettered();
                self.ack(&delivery).await;
            }
            Err(err) => {
                self.unsettled.fetch_sub(1, Ordering::SeqCst);
                // Rejecting without requeue still routes it through the
                // queue's dead-letter exchange, without the reason.
                warn!(error = %Chain(&err), "could not publish the dead letter; rejecting instead");
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
        }
    }
}

fn log_settled(disposition: &Disposition, metrics: &Metrics) {
    match disposition {
        Disposition::Done(result) => metrics.case_finished(result.status),
        Disposition::GiveUp(_) => {
            metrics.case_finished(canotify_common::Status::Failed);
            metrics.dead_lettered();
        }
        Disposition::Retry(_) => metrics.retried(),
        Disposition::Hold => {}
    }
    match disposition {
        Disposition::Done(result) => {
            debug!(case_id = %result.case_id, status = %result.status, "case finished");
        }
        Disposition::GiveUp(result) => warn!(
            case_id = %result.case_id,
            attempts = result.attempts,
            reason = result.reason.as_deref().unwrap_or(""),
            "case failed on its last attempt; recorded failed and dead-lettered"
        ),
        Disposition::Retry(retry) => debug!(
            case_id = %retry.request.case_id,
            attempt = retry.attempt,
            reason = %retry.reason,
            "case sent to wait before its next attempt"
        ),
        Disposition::Hold => {}
    }
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

impl Settler {
    fn received(&self) {
        self.unsettled.fetch_add(1, Ordering::SeqCst);
    }

    fn unsettled(&self) -> usize {
        self.unsettled.load(Ordering::SeqCst)
    }

    async fn requeue(&self, delivery: &Delivery) {
        self.unsettled.fetch_sub(1, Ordering::SeqCst);
        let _ = delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
    }

    async fn ack(&self, delivery: &Delivery) {
        self.unsettled.fetch_sub(1, Ordering::SeqCst);
        if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
            // The broker will redeliver it; the case's uuid makes that harmless.
            warn!(error = %Chain(&err), "ack failed");
        }
    }
}
