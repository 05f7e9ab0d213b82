//! `canotify-writer`: writes case outcomes back to the warehouse. All the
//! work is in the library; this parses configuration, sets up logging and
//! runs it until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;

use canotify_common::{Shutdown, telemetry};
use canotify_writer::WriterConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = WriterConfig::parse();
    if let Err(err) = telemetry::init(&config.log) {
        eprintln!("canotify-writer: {err}");
        return ExitCode::FAILURE;
    }

    match canotify_writer::run(config, Shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err = anyhow::Error::from(err);
            tracing::error!(error = format!("{err:#}"), "writer stopped on an error");
            ExitCode::FAILURE
        }
    }
}
