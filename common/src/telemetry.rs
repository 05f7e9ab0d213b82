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
    let filter = EnvFilter::try_new(&args.filter)
        .map_err(|err| format!("invalid log filter {:?}: {err}", args.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|err| format!("cannot install the logger: {err}"))
}
