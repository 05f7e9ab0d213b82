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

#[cfg(test)]
mod tests {
    use super::*;

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
