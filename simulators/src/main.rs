//! `canotify-simulators`: runs the Twilio Lookup and verification server
//! simulators side by side for the local demo and the benchmarks, until
//! Ctrl-C or SIGTERM.
//!
//! Everything is configured by flag or environment variable; the defaults
//! match the ones the worker uses against a local stack.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use canotify_simulators::{twilio, verification};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Local stand-ins for Twilio Lookup and the verification server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    /// Address the Twilio Lookup simulator listens on.
    #[arg(long, env = "SIM_TWILIO_LISTEN", default_value = "0.0.0.0:8081")]
    twilio_listen: SocketAddr,

    /// Address the verification server simulator listens on.
    #[arg(long, env = "SIM_VERIFICATION_LISTEN", default_value = "0.0.0.0:8082")]
    verification_listen: SocketAddr,

    /// Account SID Twilio callers must authenticate with.
    #[arg(long, env = "SIM_TWILIO_ACCOUNT_SID", default_value = "ACsimulator")]
    twilio_account_sid: String,

    /// Auth Token Twilio callers must authenticate with.
    #[arg(
        long,
        env = "SIM_TWILIO_AUTH_TOKEN",
        default_value = "simulator-token",
        hide_env_values = true
    )]
    twilio_auth_token: String,

    /// Admin API key verification callers must send in X-API-Key.
    #[arg(
        long,
        env = "SIM_VERIFICATION_API_KEY",
        default_value = "simulator-admin-key",
        hide_env_values = true
    )]
    verification_api_key: String,

    /// Milliseconds added to every answer of both simulators.
    #[arg(long = "latency-ms", env = "SIM_LATENCY", default_value_t = 0)]
    latency_ms: u64,

    /// Fraction of Twilio lookups and of verification codes that fail
    /// with a 500, between 0 and 1.
    #[arg(long, env = "SIM_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    error_rate: f64,

    /// Verification requests allowed per minute (a batch is one); no limit
    /// if unset.
    #[arg(long, env = "SIM_RATE_LIMIT_PER_MINUTE")]
    rate_limit_per_minute: Option<u32>,

    /// Verification codes allowed per 24 hours; no quota if unset.
    #[arg(long, env = "SIM_DAILY_QUOTA")]
    daily_quota: Option<u64>,

    /// Seed of the simulators' random draws, to replay a run.
    #[arg(long, env = "SIM_SEED", default_value_t = 0)]
    seed: u64,
}

fn parse_rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Colour only for a person at a terminal; log files and docker's log
    // driver get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let latency = Duration::from_millis(config.latency_ms);
    let twilio = twilio::start(
        twilio::TwilioConfig {
            account_sid: config.twilio_account_sid,
            auth_token: config.twilio_auth_token,
            latency,
            error_rate: config.error_rate,
            max_concurrent: None,
            seed: config.seed,
        },
        config.twilio_listen,
    )
    .await
    .with_context(|| format!("binding the Twilio simulator to {}", config.twilio_listen))?;

    // A different seed keeps the two simulators' faults from falling on
    // the same draws.
    let verification = verification::start(
        verification::VerificationConfig {
            api_key: config.verification_api_key,
            latency,
            item_error_rate: config.error_rate,
            rate_limit_per_minute: config.rate_limit_per_minute,
            daily_quota: config.daily_quota,
            seed: config.seed.wrapping_add(1),
            ..Default::default()
        },
        config.verification_listen,
    )
    .await
    .with_context(|| {
        format!(
            "binding the verification simulator to {}",
            config.verification_listen
        )
    })?;

    println!("twilio lookup simulator: {}", twilio.url());
    println!("verification server simulator: {}", verification.url());

    shutdown_signal().await?;
    tracing::info!("shutting down");
    twilio.shutdown().await;
    verification.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what `docker stop` sends).
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};

        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("listening for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("listening for Ctrl-C")?;

    Ok(())
}
