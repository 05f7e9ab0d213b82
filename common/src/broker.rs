//! The RabbitMQ topology, declared the same way by every process on start,
//! and the publishing that every step relies on: persistent messages,
//! `mandatory`, and publisher confirms awaited before anything is acked.
//!
//! ```text
//! producer ─▶ {prefix}.checks ─▶ worker ─▶ {prefix}.results ─▶ writer
//!                  │ rejected                    │ rejected
//!                  └──────▶ {prefix}.dlx ◀───────┘
//!                               └─▶ {prefix}.dead (classic, for inspection)
//! ```

use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::Secret;
use crate::config::redact_url;
use crate::telemetry::Chain;

/// The header in which canotify counts attempts itself: the broker's own
/// `x-death` count is unreliable once messages are republished.
pub const ATTEMPTS_HEADER: &str = "x-canotify-attempts";

/// The header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-canotify-reason";

/// The header naming the step that gave up on a message.
pub const STAGE_HEADER: &str = "x-canotify-stage";

/// The header naming the queue a dead letter came from.
pub const SOURCE_HEADER: &str = "x-canotify-source-queue";

/// The header holding when a case first failed in a way worth retrying
/// (RFC 3339), carried through every retry to its dead letter.
pub const FIRST_FAILURE_HEADER: &str = "x-canotify-first-failure";

/// The header holding when a message last failed (RFC 3339).
pub const LAST_FAILURE_HEADER: &str = "x-canotify-last-failure";

/// The header an operator's requeue adds, holding when it happened.
pub const REQUEUED_HEADER: &str = "x-canotify-requeued-at";

/// How long a publish may wait for its confirm before it counts as failed.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Quorum queues are replicated and the production default; classic queues
/// are faster on a single node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    #[default]
    Quorum,
    Classic,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach RabbitMQ at {address}")]
    Connect {
        address: String,
        #[source]
        source: lapin::Error,
    },
    #[error("queue prefix {0:?} must be 1 to 100 characters of letters, digits, '.', '-' or '_'")]
    BadPrefix(String),
    #[error("broker operation failed: {0}")]
    Amqp(#[from] lapin::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key {0:?}")]
    Unroutable(String),
    #[error("no confirm from the broker within {0:?}")]
    ConfirmTimeout(Duration),
}

/// Opens a connection, naming the process so operators see who is connected.
pub async fn connect(url: &Secret, process: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(process.into());
    Connection::connect(url.expose(), properties)
        .await
        .map_err(|source| BrokerError::Connect {
            address: redact_url(url.expose()),
            source,
        })
}

/// The longest a process waits for the broker to acknowledge a close. A
/// broker that does not answer must not keep a stopping process up.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes a connection, waiting at most [`CLOSE_WAIT`] for the broker. The
/// broker requeues whatever the connection left unacked either way.
pub async fn close_connection(connection: &Connection, reason: &str) {
    let closed = connection.close(200, reason.into());
    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
        tracing::warn!(wait = ?CLOSE_WAIT, "the broker did not acknowledge closing the connection; leaving it");
    }
}

/// Closes a channel, waiting at most [`CLOSE_WAIT`] for the broker.
pub async fn close_channel(channel: &Channel, reason: &str) {
    let closed = channel.close(200, reason.into());
    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
        tracing::warn!(wait = ?CLOSE_WAIT, "the broker did not acknowledge closing a channel; leaving it");
    }
}

/// Reads a queue's message and consumer counts without declaring it: a
/// passive declare, which fails (and closes `channel`) when the queue does
/// not exist.
pub async fn inspect_queue(channel: &Channel, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Connects, trying again with jittered backoff until it works or shutdown
/// is asked for (then `None`). Every process uses it at start and after
/// losing the broker, so an outage only pauses the pipeline.
pub async fn connect_with_retry(
    url: &Secret,
    process: &str,
    shutdown: &crate::Shutdown,
) -> Option<Connection> {
    let mut backoff = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(15))
            .with_jitter()
            .without_max_times(),
    );
    loop {
        if shutdown.is_requested() {
            return None;
        }
        match connect(url, process).await {
            Ok(connection) => return Some(connection),
            Err(err) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(15));
                tracing::warn!(error = %Chain(&err), retry_in = ?wait, "broker unavailable; will connect again");
                tokio::select! {
                    _ = shutdown.requested() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The names of one deployment's queues and exchanges.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
    retry_delays: Vec<Duration>,
}

impl Topology {
    pub fn new(prefix: &str, queue_type: QueueType) -> Result<Self, BrokerError> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 100
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid {
            return Err(BrokerError::BadPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            queue_type,
            retry_delays: Vec::new(),
        })
    }

    /// Adds a wait queue for each delay: a case failing its n-th attempt
    /// waits the n-th delay before it comes back to the checks queue.
    pub fn with_retry_delays(mut self, delays: &[Duration]) -> Self {
        self.retry_delays = delays.to_vec();
        self
    }

    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// Deliveries a case gets before it is given up: one, and one more
    /// after each retry delay.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.retry_delays.len()).unwrap_or(u32::MAX - 1) + 1
    }

    /// The queue where a case waits `delay` before it is checked again.
    pub fn wait_queue(&self, delay: Duration) -> String {
        format!("{}.wait.{}ms", self.prefix, delay.as_millis())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Cases waiting for a worker.
    pub fn checks(&self) -> String {
        format!("{}.checks", self.prefix)
    }

    /// Outcomes waiting for the writer.
    pub fn results(&self) -> String {
        format!("{}.results", self.prefix)
    }

    /// Messages that could not be handled, kept for an operator.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// A copy of a message for the dead-letter queue, keeping its headers
    /// and adding why, where and by whom it was given up, and when. Its
    /// message id is the case id when the body names one, so an operator
    /// can find it by case.
    pub fn dead_letter(
        &self,
        body: &[u8],
        headers: Option<&FieldTable>,
        source_queue: &str,
        stage: &str,
        reason: &str,
    ) -> Outgoing {
        let now = string(&jiff::Timestamp::now().to_string());
        let mut headers = headers.cloned().unwrap_or_default();
        if !headers.contains_key(FIRST_FAILURE_HEADER) {
            headers.insert(FIRST_FAILURE_HEADER.into(), now.clone());
        }
        headers.insert(LAST_FAILURE_HEADER.into(), now);
        headers.insert(REASON_HEADER.into(), string(reason));
        headers.insert(STAGE_HEADER.into(), string(stage));
        headers.insert(SOURCE_HEADER.into(), string(source_queue));
        Outgoing {
            queue: self.dead(),
            body: body.to_vec(),
            headers,
            message_id: case_id_of(body),
        }
    }

    /// Every queue, in the order an operator reads them.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![self.checks()];
        queues.extend(self.wait_queues());
        queues.extend([self.results(), self.dead()]);
        queues
    }

    /// The distinct wait queues, shortest delay first.
    fn wait_queues(&self) -> Vec<String> {
        self.distinct_delays()
            .into_iter()
            .map(|d| self.wait_queue(d))
            .collect()
    }

    /// The retry delays without repeats, shortest first: one wait queue each.
    fn distinct_delays(&self) -> Vec<Duration> {
        let mut delays = self.retry_delays.clone();
        delays.sort();
        delays.dedup();
        delays
    }

    /// Declares everything; safe to run from every process at every start.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };

        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;

        // The dead-letter queue is always classic: inspecting a classic
        // queue does not spend delivery attempts as a quorum queue would.
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), string("classic"));
        channel
            .queue_declare(self.dead().into(), durable, dead_args)
            .await?;
        channel
            .queue_bind(
                self.dead().into(),
                self.dead_letter_exchange().into(),
                self.dead().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        for queue in [self.checks(), self.results()] {
            let args = self.work_queue_arguments(&self.dead_letter_exchange(), &self.dead());
            channel.queue_declare(queue.into(), durable, args).await?;
        }

        // A wait queue has no consumer: its messages expire after the delay
        // and the broker dead-letters them back onto the checks queue
        // through the default exchange.
        for delay in self.distinct_delays() {
            let mut args = self.work_queue_arguments("", &self.checks());
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            channel
                .queue_declare(self.wait_queue(delay).into(), durable, args)
                .await?;
        }
        Ok(())
    }

    fn work_queue_arguments(
        &self,
        dead_letter_exchange: &str,
        dead_letter_key: &str,
    ) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            string(dead_letter_exchange),
        );
        args.insert("x-dead-letter-routing-key".into(), string(dead_letter_key));
        match self.queue_type {
            QueueType::Quorum => {
                args.insert("x-queue-type".into(), string("quorum"));
                // At-least-once dead-lettering, so a poison message is never
                // dropped on its way to the dead-letter queue, and a delivery
                // limit so it cannot loop for ever.
                args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
                args.insert("x-overflow".into(), string("reject-publish"));
                args.insert("x-delivery-limit".into(), AMQPValue::LongInt(20));
            }
            QueueType::Classic => {
                args.insert("x-queue-type".into(), string("classic"));
            }
        }
        args
    }

    /// Removes every queue and exchange of this prefix (tests and the demo).
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for queue in self.queues() {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        channel
            .exchange_delete(
                self.dead_letter_exchange().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
    }
}

/// The `case_id` of a JSON message body, if it has a readable one.
pub fn case_id_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithCaseId {
        case_id: crate::CaseId,
    }
    serde_json::from_slice::<WithCaseId>(body)
        .ok()
        .map(|m| m.case_id.as_str().to_owned())
}

/// Reads a string header, whichever AMQP string type it came as.
pub fn header_str<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

pub(crate) fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// One message to publish: routing key (the queue name, through the default
/// exchange), JSON body and headers.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub queue: String,
    pub body: Vec<u8>,
    pub headers: FieldTable,
    pub message_id: Option<String>,
}

impl Outgoing {
    pub fn json<T: serde::Serialize>(queue: &str, body: &T) -> Self {
        Self {
            queue: queue.to_owned(),
            body: serde_json::to_vec(body).expect("message types always serialise"),
            headers: FieldTable::default(),
            message_id: None,
        }
    }

    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    pub fn with_header(mut self, name: &str, value: AMQPValue) -> Self {
        self.headers.insert(name.into(), value);
        self
    }
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn new(connection: &Connection) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes every message, then waits for each confirm. The answer for
    /// each message says whether the broker now holds it durably.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Vec<Result<(), PublishError>> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let queue = message.queue.clone();
            let confirm = self.basic_publish(message).await;
            pending.push(async move {
                let confirm = confirm?;
                match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                    Err(_) => Err(PublishError::ConfirmTimeout(CONFIRM_TIMEOUT)),
                    Ok(Err(err)) => Err(PublishError::Amqp(err)),
                    Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                    Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable(queue)),
                    Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
                    // Confirm mode is selected in `new`, so this cannot
                    // happen; treat it as unconfirmed all the same.
                    Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
                }
            });
        }
        join_all(pending).await
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, message: Outgoing) -> Result<(), PublishError> {
        self.publish_all(vec![message])
            .await
            .pop()
            .expect("one message gives one answer")
    }

    async fn basic_publish(
        &self,
        message: Outgoing,
    ) -> Result<lapin::PublisherConfirm, PublishError> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(message.headers);
        if let Some(id) = message.message_id {
            properties = properties.with_message_id(ShortString::from(id));
        }
        Ok(self
            .channel
            .basic_publish(
                "".into(),
                message.queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                properties,
            )
            .await?)
    }
}

/// Reads canotify's attempt counter from a delivery's headers (0 if absent).
pub fn attempts(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    match headers.inner().get(ATTEMPTS_HEADER) {
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u32::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => u32::from(*n),
        _ => 0,
    }
}
