//! Logging set-up shared by the binaries: `tracing` to stderr, as text for a
//! terminal or JSON for a log collector, filtered by `RUST_LOG`-style
//! directives. What goes into the log is each module's care: no phone number
//! but masked, no test date or type, no secret.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log filter directives, e.g. `info` or `info,canotify_worker=debug`.
    #[arg(long = "log", env = "CANOTIFY_LOG", default_value = "info")]
    pub filter: String,

    /// Log line format.
    #[arg(
        long = "log-format",
        env = "CANOTIFY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub format: LogFormat,
}

/// Installs the global subscriber. Fails if the filter does not parse.
pub fn init(args: &LogArgs) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter};

    let directives = EnvFilter::try_new(&args.filter)
        .map_err(|err| format!("invalid log filter {:?}: {err}", args.filter))?;

    // lapin traces whole frames, message bodies included, so its trace
    // level stays off whatever the filter asks. Records of the `log` crate
    // (where tokio-postgres logs bound parameters) are deliberately not
    // bridged.
    let no_frames = filter::filter_fn(|meta| {
        *meta.level() != tracing::Level::TRACE
            || !(meta.target().starts_with("lapin") || meta.target().starts_with("amq_protocol"))
    });

    // Colour only for a person at a terminal; files and log drivers get
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = match args.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(directives).with_filter(no_frames))
        .try_init()
        .map_err(|err| format!("cannot install the logger: {err}"))
}

/// Shows an error with its whole cause chain (`outer: inner: root`), for
/// the one log line where the error ends.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            // Some errors already print their cause; say it once.
            let text = cause.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = cause.source();
        }
        Ok(())
    }
}

/// How often a long-running process reports its progress.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Counts work done over a long run and says so at info level at most once
/// per interval, so an operator sees progress without a line per item.
pub struct Progress {
    what: &'static str,
    every: std::time::Duration,
    since: std::time::Instant,
    recent: u64,
    total: u64,
}

impl Progress {
    /// `what` names the items counted, e.g. `"results written"`.
    pub fn new(what: &'static str, every: std::time::Duration) -> Self {
        Self {
            what,
            every,
            since: std::time::Instant::now(),
            recent: 0,
            total: 0,
        }
    }

    /// Counts `n` more items; answers whether that made a progress line.
    pub fn add(&mut self, n: u64) -> bool {
        self.recent += n;
        self.total += n;
        let elapsed = self.since.elapsed();
        if self.recent == 0 || elapsed < self.every {
            return false;
        }
        let per_s = self.recent as f64 / elapsed.as_secs_f64().max(0.001);
        tracing::info!(
            recent = self.recent,
            total = self.total,
            per_s = format_args!("{per_s:.1}"),
            "{}",
            self.what
        );
        self.recent = 0;
        self.since = std::time::Instant::now();
        true
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_speaks_once_an_interval_has_passed_and_only_of_new_work() {
        let mut quiet = Progress::new("things done", std::time::Duration::from_secs(3600));
        let mut eager = Progress::new("things done", std::time::Duration::ZERO);

        assert!(!quiet.add(5));
        assert!(eager.add(5));
        assert!(!eager.add(0));
        assert!(eager.add(2));
        assert_eq!((quiet.total(), eager.total()), (5, 7));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_shows_every_cause_once() {
        let err = Outer(std::io::Error::other("root cause"));

        assert_eq!(Chain(&err).to_string(), "outer: root cause");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn chain_skips_a_cause_the_error_already_printed() {
        let err = Repeats(std::io::Error::other("root cause"));

        assert_eq!(Chain(&err).to_string(), "outer: root cause");
    }
}
