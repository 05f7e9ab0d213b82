//! The consume loop around the worker's core: deliveries from the checks
//! queue go through `Worker::check` one by one; textable cases gather into
//! batches of up to ten (or whatever arrived within the linger) for
//! `Worker::issue`. Each case's result is published with a confirm, and only
//! then is its delivery acked, so a crash anywhere means redelivery.

use std::sync::Arc;
use std::time::Duration;

use canotify_common::broker::{self, ATTEMPTS_HEADER, Outgoing, Publisher, Topology};
use canotify_common::{CheckRequest, Shutdown};
use futures_util::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::core::{Checked, Disposition, Fatal, Incoming, Textable, Worker};
use crate::verification::MAX_BATCH;

#[derive(Clone, Debug)]
pub struct ConsumeOptions {
    pub prefetch: u16,
    pub linger: Duration,
    pub issue_concurrency: usize,
}

/// Consumes until shutdown or a fatal fault. In-flight cases are finished
/// before it returns; what was not started goes back to the queue.
pub async fn consume(
    worker: Arc<Worker>,
    connection: &Connection,
    topology: &Topology,
    options: ConsumeOptions,
    shutdown: Shutdown,
) -> Result<(), crate::WorkerError> {
    let publisher = Publisher::new(connection).await?;
    topology.declare(publisher.channel()).await?;

    let channel = connection.create_channel().await?;
    channel
        .basic_qos(options.prefetch, BasicQosOptions { global: false })
        .await?;
    let tag = format!("canotify-worker-{}", std::process::id());
    let mut consumer = channel
        .basic_consume(
            topology.checks().into(),
            tag.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(queue = %topology.checks(), prefetch = options.prefetch, "worker consuming");

    let (fatal_tx, mut fatal_rx) = watch::channel::<Option<Arc<Fatal>>>(None);
    let settle = Settler {
        publisher,
        topology: topology.clone(),
        fatal: fatal_tx,
    };
    let (batch_tx, batch_rx) =
        mpsc::channel::<(Delivery, Textable)>(usize::from(options.prefetch).max(MAX_BATCH));
    let batcher = tokio::spawn(batch_and_issue(
        worker.clone(),
        batch_rx,
        settle.clone(),
        options.clone(),
    ));
    let mut checks = JoinSet::new();

    let outcome = loop {
        tokio::select! {
            _ = shutdown.requested() => break Ok(()),
            _ = fatal_rx.changed() => break Err(()),
            next = consumer.next() => match next {
                None => break Ok(()),
                Some(Err(err)) => {
                    error!(error = %err, "lost the broker while consuming");
                    break Err(());
                }
                Some(Ok(delivery)) => {
                    let worker = worker.clone();
                    let settle = settle.clone();
                    let batch_tx = batch_tx.clone();
                    checks.spawn(async move {
                        check_one(&worker, delivery, &settle, &batch_tx).await;
                    });
                }
            }
        }
        // Reap finished checks so the set does not grow.
        while checks.try_join_next().is_some() {}
    };

    // Stop taking work, then let what is in flight finish.
    let _ = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await;
    while checks.join_next().await.is_some() {}
    drop(batch_tx);
    let _ = batcher.await;
    let _ = channel.close(200, "worker stopping".into()).await;

    let fatal = fatal_rx.borrow().clone();
    match (outcome, fatal) {
        (_, Some(fatal)) => Err(crate::WorkerError::Fatal(fatal)),
        (Err(()), None) => Err(crate::WorkerError::BrokerLost),
        (Ok(()), None) => {
            info!("worker stopped");
            Ok(())
        }
    }
}

async fn check_one(
    worker: &Worker,
    delivery: Delivery,
    settle: &Settler,
    batch_tx: &mpsc::Sender<(Delivery, Textable)>,
) {
    let request: CheckRequest = match serde_json::from_slice(&delivery.data) {
        Ok(request) => request,
        Err(err) => {
            warn!(error = %err, bytes = delivery.data.len(), "unreadable case message; dead-lettering it");
            settle.dead_letter(delivery, "unreadable_message").await;
            return;
        }
    };
    let span = info_span!("case", case_id = %request.case_id);
    let incoming = Incoming {
        attempt: broker::attempts(&delivery.properties) + 1,
        request,
    };

    async {
        match worker.check(&incoming).await {
            Ok(Checked::Finished(disposition)) => {
                settle.settle(vec![(delivery, disposition)]).await
            }
            Ok(Checked::Textable(case)) => {
                // The batcher is gone only during shutdown; the delivery then
                // goes back to the queue.
                if let Err(mpsc::error::SendError((delivery, _))) =
                    batch_tx.send((delivery, *case)).await
                {
                    settle.requeue(delivery).await;
                }
            }
            Err(fatal) => settle.stop(delivery, fatal).await,
        }
    }
    .instrument(span)
    .await;
}

/// Gathers textable cases into batches and issues them, a few batches at a
/// time.
async fn batch_and_issue(
    worker: Arc<Worker>,
    mut rx: mpsc::Receiver<(Delivery, Textable)>,
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
            let (deliveries, cases): (Vec<Delivery>, Vec<Textable>) = batch.into_iter().unzip();
            debug!(cases = cases.len(), "issuing a batch");
            match worker.issue(cases).await {
                Ok(dispositions) => {
                    settle
                        .settle(deliveries.into_iter().zip(dispositions).collect())
                        .await
                }
                Err(fatal) => {
                    let fatal = Arc::new(fatal);
                    for delivery in deliveries {
                        settle.requeue(delivery).await;
                    }
                    settle.raise(fatal);
                }
            }
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
    fatal: watch::Sender<Option<Arc<Fatal>>>,
}

impl Settler {
    async fn settle(&self, items: Vec<(Delivery, Disposition)>) {
        let messages = items
            .iter()
            .map(|(_, disposition)| match disposition {
                Disposition::Done(result) => Outgoing::json(&self.topology.results(), result)
                    .with_message_id(result.case_id.as_str()),
                Disposition::Retry {
                    request,
                    next_attempt,
                    ..
                } => Outgoing::json(&self.topology.checks(), request)
                    .with_message_id(request.case_id.as_str())
                    .with_header(ATTEMPTS_HEADER, AMQPValue::LongUInt(next_attempt - 1)),
            })
            .collect();
        let confirms = self.publisher.publish_all(messages).await;

        for ((delivery, disposition), confirm) in items.into_iter().zip(confirms) {
            match confirm {
                Ok(()) => {
                    if let Disposition::Done(result) = &disposition {
                        debug!(case_id = %result.case_id, status = %result.status, "case finished");
                    }
                    ack(&delivery).await;
                }
                Err(err) => {
                    warn!(error = %err, "result not confirmed by the broker; the case will be redelivered");
                    self.requeue(delivery).await;
                }
            }
        }
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
            Ok(()) => ack(&delivery).await,
            Err(err) => {
                // Rejecting without requeue still routes it through the
                // queue's dead-letter exchange, without the reason.
                warn!(error = %err, "could not publish the dead letter; rejecting instead");
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
        }
    }

    async fn requeue(&self, delivery: Delivery) {
        let _ = delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
    }

    async fn stop(&self, delivery: Delivery, fatal: Fatal) {
        self.requeue(delivery).await;
        self.raise(Arc::new(fatal));
    }

    fn raise(&self, fatal: Arc<Fatal>) {
        self.fatal.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(fatal);
                true
            } else {
                false
            }
        });
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
        // The broker will redeliver it; the case's uuid makes that harmless.
        warn!(error = %err, "ack failed");
    }
}
