//! The simulators binary's configuration, in the library so the compose
//! check can read which environment variables the binary accepts.

use std::net::SocketAddr;

use clap::Parser;

/// Local stand-ins for Twilio Lookup and the verification server.
#[derive(Debug, Parser)]
#[command(name = "canotify-simulators", version, about)]
pub struct SimulatorConfig {
    /// Address the Twilio Lookup simulator listens on.
    #[arg(long, env = "SIM_TWILIO_LISTEN", default_value = "0.0.0.0:8081")]
    pub twilio_listen: SocketAddr,

    /// Address the verification server simulator listens on.
    #[arg(long, env = "SIM_VERIFICATION_LISTEN", default_value = "0.0.0.0:8082")]
    pub verification_listen: SocketAddr,

    /// Account SID Twilio callers must authenticate with.
    #[arg(long, env = "SIM_TWILIO_ACCOUNT_SID", default_value = "ACsimulator")]
    pub twilio_account_sid: String,

    /// Auth Token Twilio callers must authenticate with.
    #[arg(
        long,
        env = "SIM_TWILIO_AUTH_TOKEN",
        default_value = "simulator-token",
        hide_env_values = true
    )]
    pub twilio_auth_token: String,

    /// Admin API key verification callers must send in X-API-Key.
    #[arg(
        long,
        env = "SIM_VERIFICATION_API_KEY",
        default_value = "simulator-admin-key",
        hide_env_values = true
    )]
    pub verification_api_key: String,

    /// Milliseconds added to every answer of both simulators.
    #[arg(long = "latency-ms", env = "SIM_LATENCY", default_value_t = 0)]
    pub latency_ms: u64,

    /// Fraction of Twilio lookups and of verification codes that fail
    /// with a 500, between 0 and 1.
    #[arg(long, env = "SIM_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// Verification requests allowed per minute (a batch is one); no limit
    /// if unset.
    #[arg(long, env = "SIM_RATE_LIMIT_PER_MINUTE")]
    pub rate_limit_per_minute: Option<u32>,

    /// Verification codes allowed per 24 hours; no quota if unset.
    #[arg(long, env = "SIM_DAILY_QUOTA")]
    pub daily_quota: Option<u64>,

    /// Seed of the simulators' random draws, to replay a run.
    #[arg(long, env = "SIM_SEED", default_value_t = 0)]
    pub seed: u64,
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
