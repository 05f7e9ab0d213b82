//! What every simulator test needs to speak to a simulator over HTTP: a
//! client, an answer read whole, and the dates and uuids of test codes.

#![allow(dead_code)]

use jiff::civil::Date;
use jiff::tz::TimeZone;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// An HTTP client for plain-http URLs. reqwest is built with rustls but no
/// crypto provider, and refuses to build a client until one is installed.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// An answer read whole: status, headers, the raw text and, when the text
/// is JSON, the JSON (`Null` otherwise).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

/// Reads an answer whole; `Err` when the body did not arrive.
pub async fn read(response: reqwest::Response) -> Result<Answer, reqwest::Error> {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        headers,
        text,
        json,
    })
}

pub fn today() -> Date {
    TimeZone::UTC.to_datetime(jiff::Timestamp::now()).date()
}

/// A stable uuid per test case number, as the worker derives per case.
pub fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}
