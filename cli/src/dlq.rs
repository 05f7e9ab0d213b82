//! `canotify dlq`: the operator's view of `{prefix}.dead`, where the worker
//! and the writer put the messages they gave up on, and where the broker
//! puts what it dead-letters itself (a reject without requeue, a quorum
//! queue's delivery limit). Letters can be listed, shown, requeued to the
//! work queue they came from, or purged.
//!
//! Every command starts by peeking: on one channel it takes every letter
//! with `basic_get` and no ack, and reads them all. Closing that channel
//! hands every letter still unacked back to the broker, which puts each one
//! back where it was. The dead-letter queue is always classic, so this
//! spends no delivery attempt, and the order stays as it was. Requeue and
//! purge ack only the letters they were asked to move or remove and leave
//! the rest to go back on close. Letters are never nacked one by one with
//! requeue: that could reorder them.
//!
//! A letter goes by its message id, which canotify sets to the case id. One
//! without a message id goes by the case id its body names, and one with
//! neither by `body-` and the first 12 hex digits of its body's SHA-256.
//! Several letters can share an id (one case dead-lettered twice); a
//! command given that id acts on all of them.
//!
//! Nothing here prints a phone number unmasked, a test date or a test type.
//!
//! Every command holds the whole queue in memory and takes it one
//! `basic_get` round trip per letter: fine for the hundreds or thousands of
//! letters an operator reads, slow for a queue of millions. While a purge
//! waits for its `yes`, the letters stay taken; an answer slower than the
//! broker's consumer timeout (30 minutes by default) finds the channel
//! closed, and nothing is removed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write};

use canotify_common::CaseId;
use canotify_common::broker::{
    self, ATTEMPTS_HEADER, BrokerError, FIRST_FAILURE_HEADER, LAST_FAILURE_HEADER, Outgoing,
    Publisher, REASON_HEADER, REQUEUED_HEADER, SOURCE_HEADER, STAGE_HEADER, Topology,
};
use canotify_common::config::BrokerArgs;
use canotify_common::phone::mask;
use canotify_common::warehouse::{Reopened, Warehouse, WarehouseError};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The header in which the broker records each time it dead-lettered a
/// message: an array of tables, the most recent first.
const X_DEATH: &str = "x-death";

/// The body field holding the phone number: shown masked, never whole.
const PHONE_FIELD: &str = "phone";

/// The body fields `show` prints as they are: those of a `CheckRequest` or
/// a `CaseResult` that say nothing about a person's health. Any other field
/// (the test and symptom dates, the test type, anything unknown) is named
/// but its value withheld.
const SHOWN_FIELDS: [&str; 7] = [
    "case_id",
    "status",
    "reason",
    "verification_uuid",
    "attempts",
    "duplicate_of",
    "finished_at",
];

/// The headers a requeue removes: they describe the failure the letter is
/// being given another chance to get past.
const FAILURE_HEADERS: [&str; 4] = [
    REASON_HEADER,
    STAGE_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_FAILURE_HEADER,
];

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(
        "queue {0} is not declared on this broker; check --queue-prefix (CANOTIFY_QUEUE_PREFIX)"
    )]
    NotDeclared(String),
    #[error("no dead letter has the id {0:?}")]
    NotFound(String),
    #[error("say which letters: --all, --reason REASON, or one or more ids")]
    NoSelection,
    #[error("the purge was not confirmed; nothing was removed")]
    NotConfirmed,
    #[error("cannot ask for confirmation: {0}")]
    Prompt(#[from] std::io::Error),
    #[error("the channel closed before the letter could be removed")]
    ChannelGone,
    #[error("broker operation failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the warehouse could not take the cases back, so nothing was requeued: {0}")]
    Warehouse(#[from] WarehouseError),
}

/// What every `dlq` command takes: where the broker is, which deployment,
/// and whether to answer in JSON.
#[derive(Clone, Debug, clap::Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Which letters a requeue or a purge acts on.
#[derive(Clone, Debug, clap::Args)]
pub struct SelectArgs {
    /// Every letter in the queue.
    #[arg(long, conflicts_with_all = ["reason", "ids"])]
    pub all: bool,

    /// Every letter dead-lettered for this reason.
    #[arg(long, conflicts_with = "ids")]
    pub reason: Option<String>,

    /// The letters with these ids (as `list` shows them).
    pub ids: Vec<String>,
}

impl SelectArgs {
    /// The selection, refused when none was given: acting on every letter
    /// must be asked for with `--all`, never be what an empty command does.
    pub fn selection(&self) -> Result<Selection, DlqError> {
        if self.all {
            return Ok(Selection::All);
        }
        if let Some(reason) = &self.reason {
            return Ok(Selection::Reason(reason.clone()));
        }
        if self.ids.is_empty() {
            return Err(DlqError::NoSelection);
        }
        Ok(Selection::Ids(self.ids.clone()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    All,
    Reason(String),
    Ids(Vec<String>),
}

impl Selection {
    fn takes(&self, letter: &Letter) -> bool {
        match self {
            Self::All => true,
            Self::Reason(reason) => letter.reason.as_deref() == Some(reason.as_str()),
            Self::Ids(ids) => ids.contains(&letter.id),
        }
    }

    /// The ids asked for that no letter taken has.
    fn unmatched(&self, peek: &Peek) -> Vec<String> {
        let Self::Ids(ids) = self else {
            return Vec::new();
        };
        ids.iter()
            .filter(|id| !peek.letters().any(|letter| &letter.id == *id))
            .cloned()
            .collect()
    }

    fn describe(&self) -> String {
        match self {
            Self::All => "every letter".to_owned(),
            Self::Reason(reason) => format!("the letters with reason {reason:?}"),
            Self::Ids(ids) => format!("the letters with id {}", ids.join(", ")),
        }
    }
}

/// How a purge is confirmed: already, by `--yes`, or by asking on `prompt`
/// and reading the answer from `input`.
pub enum Confirm<'a> {
    Yes,
    Ask {
        input: &'a mut dyn BufRead,
        prompt: &'a mut dyn Write,
    },
}

/// One dead letter as `list` shows it. Where canotify's own headers are
/// missing (the broker dead-lettered the message itself), the source queue,
/// reason, count and times come from the broker's `x-death` header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Letter {
    pub id: String,
    pub case_id: Option<String>,
    pub source_queue: Option<String>,
    /// The step that gave up (`worker`, `writer`); none when the broker
    /// dead-lettered the message.
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub attempts: Option<u32>,
    /// RFC 3339.
    pub first_failure: Option<String>,
    /// RFC 3339.
    pub last_failure: Option<String>,
    pub phone_masked: Option<String>,
    /// When an operator last requeued it, if it came back since.
    pub requeued_at: Option<String>,
}

/// What `list` answers.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    pub queue: String,
    pub count: usize,
    pub letters: Vec<Letter>,
}

/// What `show` answers: every letter with the id asked for.
#[derive(Clone, Debug, Serialize)]
pub struct Shown {
    pub id: String,
    pub letters: Vec<Detail>,
}

/// One letter in full, as far as it is safe to print.
#[derive(Clone, Debug, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub letter: Letter,
    pub message_id: Option<String>,
    pub headers: BTreeMap<String, Value>,
    pub body: BodyView,
}

/// A letter's body as `show` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BodyView {
    /// A JSON object: the fields safe to print (the phone masked), and the
    /// names of those whose values are withheld.
    Fields {
        fields: BTreeMap<String, Value>,
        withheld: Vec<String>,
    },
    /// Anything else: only its length, since nothing says what it holds.
    Opaque { bytes: usize },
}

/// What `requeue` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequeueReport {
    pub queue: String,
    pub requeued: Vec<Moved>,
    /// Letters removed without a copy, because their case was recorded
    /// `duplicate`: its person was texted by another case meanwhile.
    pub recorded_duplicate: Vec<Recorded>,
    /// Selected letters that stay in the dead-letter queue, with why.
    pub left: Vec<Left>,
    pub not_found: Vec<String>,
    /// Letters in the dead-letter queue afterwards.
    pub remaining: usize,
}

impl RequeueReport {
    /// Whether every letter asked for went back.
    pub fn is_complete(&self) -> bool {
        self.left.is_empty() && self.not_found.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub id: String,
    pub to: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recorded {
    pub id: String,
    pub case_id: String,
    /// The case that texted the same person.
    pub duplicate_of: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Left {
    pub id: String,
    pub why: String,
}

/// What `purge` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PurgeReport {
    pub queue: String,
    /// The id of each letter removed, once per letter.
    pub purged: Vec<String>,
    pub not_found: Vec<String>,
    /// Letters in the dead-letter queue afterwards.
    pub remaining: usize,
}

/// One deployment's dead-letter queue, over one broker connection.
pub struct DeadLetters {
    connection: Connection,
    topology: Topology,
}

impl DeadLetters {
    pub async fn connect(broker: &BrokerArgs) -> Result<Self, DlqError> {
        let topology = broker.topology()?;
        let connection = broker::connect(&broker.amqp_url, "canotify-dlq").await?;
        Ok(Self {
            connection,
            topology,
        })
    }

    pub async fn close(self) {
        // Nothing is left to do on the connection; a failed close only
        // means the broker notices the socket closing instead.
        broker::close_connection(&self.connection, "dlq done").await;
    }

    /// Every letter, in queue order, leaving the queue as it was.
    pub async fn list(&self) -> Result<Listing, DlqError> {
        let peek = self.peek().await?;
        let letters: Vec<Letter> = peek.letters().cloned().collect();
        peek.give_back().await;

        Ok(Listing {
            queue: self.topology.dead(),
            count: letters.len(),
            letters,
        })
    }

    /// Every letter with this id, leaving the queue as it was.
    pub async fn show(&self, id: &str) -> Result<Shown, DlqError> {
        let peek = self.peek().await?;
        let letters: Vec<Detail> = peek
            .taken
            .iter()
            .filter(|(_, letter)| letter.id == id)
            .map(|(delivery, letter)| detail(delivery, letter))
            .collect();
        peek.give_back().await;

        if letters.is_empty() {
            return Err(DlqError::NotFound(id.to_owned()));
        }
        Ok(Shown {
            id: id.to_owned(),
            letters,
        })
    }

    /// Puts the selected letters back on the work queue each came from,
    /// with attempts reset to 0, the failure headers removed and a header
    /// recording the requeue. Every other letter stays where it was.
    ///
    /// A case bound for the checks queue is first taken back in
    /// `warehouse`, as the producer claims a case: if another case of the
    /// same person was texted within `window_days` meanwhile, the case is
    /// recorded `duplicate` and its letter removed, with no copy; if one is
    /// in flight, or the case's outcome is final, the letter stays.
    pub async fn requeue<W: Warehouse>(
        &self,
        selection: &Selection,
        warehouse: &W,
        window_days: u32,
    ) -> Result<RequeueReport, DlqError> {
        let peek = self.peek().await?;
        let publisher = Publisher::new(&self.connection).await?;
        let checks = self.topology.checks();
        let work_queues = [checks.clone(), self.topology.results()];
        let now = jiff::Timestamp::now().to_string();
        let mut report = RequeueReport {
            queue: self.topology.dead(),
            not_found: selection.unmatched(&peek),
            ..RequeueReport::default()
        };
        let selected: Vec<&(Delivery, Letter)> = peek
            .taken
            .iter()
            .filter(|(_, letter)| selection.takes(letter))
            .collect();

        // A case goes back to the checks queue only once the warehouse has
        // taken it back under the producer's rule of one text per person.
        let case_of = |letter: &Letter| {
            (letter.source_queue.as_ref() == Some(&checks))
                .then(|| {
                    letter
                        .case_id
                        .as_deref()
                        .and_then(|id| CaseId::new(id).ok())
                })
                .flatten()
        };
        let mut reopening: Vec<CaseId> = selected.iter().filter_map(|(_, l)| case_of(l)).collect();
        reopening.sort();
        reopening.dedup();
        let reopened: std::collections::HashMap<CaseId, Reopened> = if reopening.is_empty() {
            Default::default()
        } else {
            let answers = warehouse.reopen(&reopening, window_days).await?;
            reopening.into_iter().zip(answers).collect()
        };

        // Only a work queue of this deployment is a place to go back to; a
        // source header naming anything else is not followed.
        let mut moving = Vec::new();
        let mut duplicates = Vec::new();
        for (delivery, letter) in selected {
            let left = |why: String| Left {
                id: letter.id.clone(),
                why,
            };
            let queue = match &letter.source_queue {
                None => {
                    report.left.push(left(
                        "no source queue is known, so it has nowhere to go back to".to_owned(),
                    ));
                    continue;
                }
                Some(queue) if !work_queues.contains(queue) => {
                    report.left.push(left(format!(
                        "it came from {queue}, which is not a work queue of prefix {}",
                        self.topology.prefix()
                    )));
                    continue;
                }
                Some(queue) => queue,
            };
            let verdict = case_of(letter).map(|id| {
                let verdict = reopened.get(&id).cloned().unwrap_or(Reopened::Unknown);
                (id, verdict)
            });
            match verdict {
                None | Some((_, Reopened::Claimed)) => {
                    moving.push((delivery, letter, requeued_copy(delivery, queue, &now)));
                }
                Some((case_id, Reopened::Duplicate { of })) => {
                    duplicates.push((delivery, letter.id.clone(), case_id, of));
                }
                Some((_, Reopened::Waiting)) => report.left.push(left(
                    "another case of the same person is in flight; requeue this one once that one has ended"
                        .to_owned(),
                )),
                Some((_, Reopened::Final(status))) => report.left.push(left(format!(
                    "its case is already recorded {status}; there is nothing to retry"
                ))),
                Some((_, Reopened::Unknown)) => report.left.push(left(
                    "the warehouse has no outcome for its case; check that --schema (CANOTIFY_SCHEMA) is this deployment's"
                        .to_owned(),
                )),
            }
        }

        // A letter is acked only after its copy is confirmed, so a failure
        // in between leaves it in the dead-letter queue rather than losing
        // it. A copy confirmed whose letter then cannot be acked is handled
        // twice, which every step of the pipeline tolerates.
        let copies = moving.iter().map(|(_, _, copy)| copy.clone()).collect();
        let confirms = publisher.publish_all(copies).await;
        for ((delivery, letter, copy), confirm) in moving.into_iter().zip(confirms) {
            let left = |why: String| Left {
                id: letter.id.clone(),
                why,
            };
            match confirm {
                Err(err) => report.left.push(left(format!(
                    "its copy for {} was not confirmed: {err}",
                    copy.queue
                ))),
                Ok(()) => match ack(delivery).await {
                    Ok(()) => report.requeued.push(Moved {
                        id: letter.id.clone(),
                        to: copy.queue,
                    }),
                    Err(why) => report.left.push(left(format!(
                        "a copy went to {}, but the letter could not be removed ({why})",
                        copy.queue
                    ))),
                },
            }
        }

        // The warehouse already holds the outcome of these; the letter has
        // nothing left to do.
        for (delivery, id, case_id, of) in duplicates {
            match ack(delivery).await {
                Ok(()) => report.recorded_duplicate.push(Recorded {
                    id,
                    case_id: case_id.as_str().to_owned(),
                    duplicate_of: of.as_str().to_owned(),
                }),
                Err(why) => report.left.push(Left {
                    id,
                    why: format!(
                        "its case was recorded duplicate of {of}, but the letter could not be removed ({why})"
                    ),
                }),
            }
        }
        report.remaining =
            peek.taken.len() - report.requeued.len() - report.recorded_duplicate.len();

        broker::close_channel(publisher.channel(), "requeue done").await;
        peek.give_back().await;
        Ok(report)
    }

    /// Removes the selected letters for good, once confirmed. Every other
    /// letter stays where it was; so does every letter when the answer is
    /// anything but `yes`.
    pub async fn purge(
        &self,
        selection: &Selection,
        confirm: Confirm<'_>,
    ) -> Result<PurgeReport, DlqError> {
        let peek = self.peek().await?;
        let chosen: Vec<&(Delivery, Letter)> = peek
            .taken
            .iter()
            .filter(|(_, letter)| selection.takes(letter))
            .collect();
        let mut report = PurgeReport {
            queue: self.topology.dead(),
            not_found: selection.unmatched(&peek),
            ..PurgeReport::default()
        };

        // The letters stay taken, unacked, while the operator answers, so
        // what is confirmed is exactly what is removed.
        if !chosen.is_empty()
            && let Confirm::Ask { input, prompt } = confirm
        {
            write!(
                prompt,
                "purge {} of the {} letters in {} ({}) for good? type yes to go on: ",
                chosen.len(),
                peek.taken.len(),
                self.topology.dead(),
                selection.describe(),
            )?;
            prompt.flush()?;
            let mut answer = String::new();
            input.read_line(&mut answer)?;
            if !answer.ends_with('\n') {
                // No line was typed (end of input): end the prompt's line.
                writeln!(prompt)?;
            }
            if answer.trim() != "yes" {
                peek.give_back().await;
                return Err(DlqError::NotConfirmed);
            }
        }

        for (delivery, letter) in chosen {
            ack(delivery).await?;
            report.purged.push(letter.id.clone());
        }
        report.remaining = peek.taken.len() - report.purged.len();

        peek.give_back().await;
        Ok(report)
    }

    /// Takes every letter without acking, on a channel of its own.
    async fn peek(&self) -> Result<Peek, DlqError> {
        let queue = self.topology.dead();
        let channel = self.connection.create_channel().await?;

        // The count taken first bounds the loop, so letters arriving
        // meanwhile cannot keep it going; they wait for the next command.
        let declared = broker::inspect_queue(&channel, &queue)
            .await
            .map_err(|err| {
                if crate::status::is_not_found(&err) {
                    DlqError::NotDeclared(queue.clone())
                } else {
                    DlqError::Amqp(err)
                }
            })?;

        let mut taken = Vec::new();
        for _ in 0..declared.message_count() {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await?;
            let Some(message) = got else {
                break;
            };
            let letter = read_letter(&message.delivery);
            taken.push((message.delivery, letter));
        }
        Ok(Peek { channel, taken })
    }
}

/// Every letter of the queue, taken and not acked. Should anything fail
/// before `give_back`, dropping the channel closes it, with the same effect.
struct Peek {
    channel: Channel,
    taken: Vec<(Delivery, Letter)>,
}

impl Peek {
    fn letters(&self) -> impl Iterator<Item = &Letter> {
        self.taken.iter().map(|(_, letter)| letter)
    }

    /// Closes the channel: the broker puts every letter not acked back in
    /// its place.
    async fn give_back(self) {
        // Should the close fail, the broker gives the letters back all the
        // same when the connection ends.
        broker::close_channel(&self.channel, "letters given back").await;
    }
}

/// Acks one delivery alone, never `multiple`, so no letter taken before it
/// is acked with it.
async fn ack(delivery: &Delivery) -> Result<(), DlqError> {
    let acked = delivery
        .acker
        .ack(BasicAckOptions { multiple: false })
        .await?;
    if acked {
        Ok(())
    } else {
        Err(DlqError::ChannelGone)
    }
}

fn read_letter(delivery: &Delivery) -> Letter {
    let headers = delivery.properties.headers().as_ref();
    let deaths = deaths(headers);
    let latest = deaths.first();
    let times: Vec<jiff::Timestamp> = deaths.iter().filter_map(|d| d.time).collect();
    let case_id = broker::case_id_of(&delivery.data);
    let body: Option<Value> = serde_json::from_slice(&delivery.data).ok();

    // `attempts` reads 0 for a missing header; a letter without one should
    // show the broker's count instead.
    let attempts = headers
        .filter(|h| h.contains_key(ATTEMPTS_HEADER))
        .map(|_| broker::attempts(&delivery.properties))
        .or_else(|| latest?.count);

    Letter {
        id: message_id(delivery)
            .or_else(|| case_id.clone())
            .unwrap_or_else(|| body_id(&delivery.data)),
        case_id,
        source_queue: text(headers, SOURCE_HEADER).or_else(|| latest?.queue.clone()),
        stage: text(headers, STAGE_HEADER),
        reason: text(headers, REASON_HEADER).or_else(|| latest?.reason.clone()),
        attempts,
        first_failure: text(headers, FIRST_FAILURE_HEADER)
            .or_else(|| times.iter().min().map(ToString::to_string)),
        last_failure: text(headers, LAST_FAILURE_HEADER)
            .or_else(|| times.iter().max().map(ToString::to_string)),
        phone_masked: body
            .as_ref()
            .and_then(|b| b.get(PHONE_FIELD))
            .and_then(Value::as_str)
            .map(mask),
        requeued_at: text(headers, REQUEUED_HEADER),
    }
}

fn detail(delivery: &Delivery, letter: &Letter) -> Detail {
    let headers = delivery
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(name, value)| (name.to_string(), header_json(value)))
                .collect()
        })
        .unwrap_or_default();
    Detail {
        letter: letter.clone(),
        message_id: message_id(delivery),
        headers,
        body: body_view(&delivery.data),
    }
}

/// A body with everything that may identify a person's health left out.
pub fn body_view(body: &[u8]) -> BodyView {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return BodyView::Opaque { bytes: body.len() };
    };

    let mut fields = BTreeMap::new();
    let mut withheld = Vec::new();
    for (name, value) in object {
        let scalar = !(value.is_object() || value.is_array());
        if name == PHONE_FIELD && (value.is_string() || value.is_null()) {
            fields.insert(name, Value::from(value.as_str().map(mask)));
        } else if scalar && SHOWN_FIELDS.contains(&name.as_str()) {
            fields.insert(name, value);
        } else {
            withheld.push(name);
        }
    }
    BodyView::Fields { fields, withheld }
}

/// A copy of a letter for its work queue, as if it had never failed.
fn requeued_copy(delivery: &Delivery, queue: &str, now: &str) -> Outgoing {
    let mut headers: BTreeMap<ShortString, AMQPValue> = delivery
        .properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    for name in FAILURE_HEADERS {
        headers.remove(name);
    }
    headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongUInt(0));
    headers.insert(REQUEUED_HEADER.into(), AMQPValue::LongString(now.into()));

    Outgoing {
        queue: queue.to_owned(),
        body: delivery.data.clone(),
        headers: FieldTable::from(headers),
        message_id: message_id(delivery).or_else(|| broker::case_id_of(&delivery.data)),
    }
}

fn message_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty())
}

/// The id of a letter that names no case: stable, since it depends on the
/// body alone, and short enough to type.
pub fn body_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("body-{hex}")
}

fn text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    broker::header_str(headers, name).map(str::to_owned)
}

/// One entry of the broker's `x-death` header: it dead-lettered the message
/// `count` times from `queue` for `reason`, at `time`.
struct Death {
    queue: Option<String>,
    reason: Option<String>,
    count: Option<u32>,
    time: Option<jiff::Timestamp>,
}

fn deaths(headers: Option<&FieldTable>) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(entries)) = headers.and_then(|h| h.inner().get(X_DEATH)) else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(table) => Some(table),
            _ => None,
        })
        .map(|table| Death {
            queue: text(Some(table), "queue"),
            reason: text(Some(table), "reason"),
            count: table
                .inner()
                .get("count")
                .and_then(whole_number)
                .and_then(|n| u32::try_from(n).ok()),
            time: match table.inner().get("time") {
                Some(AMQPValue::Timestamp(seconds)) => i64::try_from(*seconds)
                    .ok()
                    .and_then(|s| jiff::Timestamp::from_second(s).ok()),
                _ => None,
            },
        })
        .collect()
}

fn whole_number(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

/// A header value as JSON: timestamps as RFC 3339, byte arrays by length.
fn header_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::from(*b),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(d) => Value::from(*d),
        AMQPValue::DecimalValue(d) => Value::from(format!("{}e-{}", d.value, d.scale)),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(items) => items.as_slice().iter().map(header_json).collect(),
        AMQPValue::Timestamp(seconds) => i64::try_from(*seconds)
            .ok()
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .map_or(Value::from(*seconds), |t| Value::from(t.to_string())),
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.to_string(), header_json(value)))
                .collect(),
        ),
        AMQPValue::ByteArray(bytes) => Value::from(format!("({} bytes)", bytes.len())),
        AMQPValue::Void => Value::Null,
        number => whole_number(number).map_or(Value::Null, Value::from),
    }
}

fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

/// `list` as text: the count, then a table with one line per letter.
pub fn render_list(listing: &Listing) -> String {
    let mut out = format!(
        "{} dead {} in {}",
        listing.count,
        plural(listing.count, "letter"),
        listing.queue
    );
    if listing.letters.is_empty() {
        return out;
    }

    let header = [
        "ID",
        "SOURCE",
        "STAGE",
        "REASON",
        "ATTEMPTS",
        "FIRST FAILURE",
        "LAST FAILURE",
        "PHONE",
    ]
    .map(str::to_owned);
    let mut rows = vec![header.to_vec()];
    for letter in &listing.letters {
        rows.push(vec![
            letter.id.clone(),
            or_dash(letter.source_queue.as_deref()).to_owned(),
            or_dash(letter.stage.as_deref()).to_owned(),
            or_dash(letter.reason.as_deref()).to_owned(),
            letter
                .attempts
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            or_dash(letter.first_failure.as_deref()).to_owned(),
            or_dash(letter.last_failure.as_deref()).to_owned(),
            or_dash(letter.phone_masked.as_deref()).to_owned(),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    out
}

/// `show` as text: each letter's summary, headers and body.
pub fn render_show(shown: &Shown) -> String {
    let mut out = String::new();
    let total = shown.letters.len();
    for (n, detail) in shown.letters.iter().enumerate() {
        let letter = &detail.letter;
        if n > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "letter {} of {total} with id {}", n + 1, shown.id);
        let summary = [
            ("case id", letter.case_id.as_deref()),
            ("message id", detail.message_id.as_deref()),
            ("source queue", letter.source_queue.as_deref()),
            ("stage", letter.stage.as_deref()),
            ("reason", letter.reason.as_deref()),
            ("first failure", letter.first_failure.as_deref()),
            ("last failure", letter.last_failure.as_deref()),
            ("requeued at", letter.requeued_at.as_deref()),
        ];
        for (name, value) in summary {
            let _ = writeln!(out, "  {name:<14} {}", or_dash(value));
        }
        let attempts = letter.attempts.map_or("-".to_owned(), |n| n.to_string());
        let _ = writeln!(out, "  {:<14} {attempts}", "attempts");

        let _ = writeln!(out, "  headers");
        for (name, value) in &detail.headers {
            let _ = writeln!(out, "    {name}: {}", plain(value));
        }

        match &detail.body {
            BodyView::Opaque { bytes } => {
                let _ = writeln!(out, "  body: {bytes} bytes, not a JSON object");
            }
            BodyView::Fields { fields, withheld } => {
                let _ = writeln!(out, "  body");
                for (name, value) in fields {
                    let _ = writeln!(out, "    {name}: {}", plain(value));
                }
                if !withheld.is_empty() {
                    let _ = writeln!(out, "    (withheld: {})", withheld.join(", "));
                }
            }
        }
    }
    out.trim_end().to_owned()
}

/// `requeue` as text.
pub fn render_requeue(report: &RequeueReport) -> String {
    let mut out = format!(
        "requeued {} {}",
        report.requeued.len(),
        plural(report.requeued.len(), "letter")
    );
    for moved in &report.requeued {
        let _ = write!(out, "\n  {} -> {}", moved.id, moved.to);
    }
    if !report.recorded_duplicate.is_empty() {
        let _ = write!(
            out,
            "\nrecorded duplicate instead, their person texted meanwhile:"
        );
        for recorded in &report.recorded_duplicate {
            let _ = write!(
                out,
                "\n  {}: case {} is a duplicate of case {}",
                recorded.id, recorded.case_id, recorded.duplicate_of
            );
        }
    }
    if !report.left.is_empty() {
        let _ = write!(out, "\nleft in {}:", report.queue);
        for left in &report.left {
            let _ = write!(out, "\n  {}: {}", left.id, left.why);
        }
    }
    push_not_found(&mut out, &report.not_found);
    push_remaining(&mut out, report.remaining, &report.queue);
    out
}

/// `purge` as text.
pub fn render_purge(report: &PurgeReport) -> String {
    let mut out = format!(
        "purged {} {}",
        report.purged.len(),
        plural(report.purged.len(), "letter")
    );
    if !report.purged.is_empty() {
        let _ = write!(out, ": {}", report.purged.join(", "));
    }
    push_not_found(&mut out, &report.not_found);
    push_remaining(&mut out, report.remaining, &report.queue);
    out
}

fn push_remaining(out: &mut String, remaining: usize, queue: &str) {
    let _ = write!(
        out,
        "\n{remaining} {} left in {queue}",
        plural(remaining, "letter")
    );
}

fn push_not_found(out: &mut String, not_found: &[String]) {
    if !not_found.is_empty() {
        let _ = write!(out, "\nno letter has the id: {}", not_found.join(", "));
    }
}

/// A JSON value for a reader: strings without quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_body_shows_its_case_and_masked_phone_and_withholds_dates_and_test_type() {
        let body = br#"{"case_id":"c1","phone":"(916) 555-1234","test_date":"2020-03-15","symptom_date":null,"test_type":"confirmed"}"#;

        let view = body_view(body);

        let BodyView::Fields { fields, withheld } = view else {
            panic!("a JSON object is shown by its fields");
        };
        assert_eq!(fields["case_id"], "c1");
        assert_eq!(fields["phone"], "**********1234");
        assert_eq!(fields.len(), 2);
        assert_eq!(withheld, ["symptom_date", "test_date", "test_type"]);
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_shown_by_its_length_only() {
        assert_eq!(
            body_view(b"+19165551234 not json"),
            BodyView::Opaque { bytes: 21 }
        );
        assert_eq!(body_view(b"[1,2]"), BodyView::Opaque { bytes: 5 });
    }

    #[test]
    fn a_body_id_is_stable_and_short() {
        let id = body_id(b"garbage");

        assert_eq!(id, body_id(b"garbage"));
        assert_ne!(id, body_id(b"other garbage"));
        assert_eq!(id.len(), "body-".len() + 12);
    }

    #[test]
    fn a_selection_must_be_given() {
        let none = SelectArgs {
            all: false,
            reason: None,
            ids: vec![],
        };

        assert!(matches!(none.selection(), Err(DlqError::NoSelection)));
    }
}
