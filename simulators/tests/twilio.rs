//! The Twilio Lookup simulator over HTTP, as the worker sees it: each test
//! starts its own simulator on a free loopback port and checks one rule of
//! `specs/twilio-lookup.md` through the answers and the billing counters.

mod support;

use std::time::Duration;

use canotify_simulators::twilio::{self, TwilioConfig, TwilioSimulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::client;

async fn simulator(config: TwilioConfig) -> TwilioSimulator {
    twilio::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the simulator binds a loopback port")
}

/// `GET {base}/v2/PhoneNumbers/{number}{query}` with the default
/// credentials; `number` goes into the path as written.
async fn lookup_at(
    base: &str,
    number: &str,
    query: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let defaults = TwilioConfig::default();
    let response = client()
        .get(format!("{base}/v2/PhoneNumbers/{number}{query}"))
        .basic_auth(defaults.account_sid, Some(defaults.auth_token))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap())
}

async fn lookup(sim: &TwilioSimulator, number: &str, query: &str) -> (StatusCode, Value) {
    let (status, _, body) = lookup_at(&sim.url(), number, query).await;
    (status, body)
}

const PAID: &str = "?Fields=line_type_intelligence";

#[tokio::test]
async fn a_valid_number_with_line_type_intelligence_is_described_and_billed() {
    let sim = simulator(TwilioConfig::default()).await;

    let (status, body) = lookup(&sim, "%2B19165550123", PAID).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["phone_number"], "+19165550123");
    assert_eq!(body["national_format"], "(916) 555-0123");
    assert_eq!(body["country_code"], "US");
    assert_eq!(body["calling_country_code"], "1");
    assert_eq!(body["valid"], true);
    assert_eq!(body["validation_errors"], Value::Null);
    let line = &body["line_type_intelligence"];
    assert_eq!(line["type"], "mobile");
    assert_eq!(line["mobile_country_code"], "310");
    assert!(line["carrier_name"].is_string());
    assert!(line["mobile_network_code"].is_string());
    assert_eq!(line["error_code"], Value::Null);
    assert_eq!(sim.paid_lookups(), 1);
}

#[tokio::test]
async fn a_plus_left_unencoded_in_the_path_is_read_the_same() {
    let sim = simulator(TwilioConfig::default()).await;

    let (status, body) = lookup(&sim, "+19165550123", PAID).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["phone_number"], "+19165550123");
}

#[tokio::test]
async fn a_national_number_is_read_in_the_country_given() {
    let sim = simulator(TwilioConfig::default()).await;

    let (_, american) = lookup(&sim, "(916)%20555-0123", "?CountryCode=US").await;
    let (_, british) = lookup(&sim, "020%207946%200018", "?CountryCode=GB").await;

    assert_eq!(american["phone_number"], "+19165550123");
    assert_eq!(american["valid"], true);
    assert_eq!(british["phone_number"], "+442079460018");
    assert_eq!(british["country_code"], "GB");
    assert_eq!(british["calling_country_code"], "44");
}

#[tokio::test]
async fn an_invalid_number_is_a_200_with_valid_false_and_is_not_billed() {
    let sim = simulator(TwilioConfig::default()).await;

    let (status, short) = lookup(&sim, "%2B1916555", PAID).await;
    let (_, garbage) = lookup(&sim, "hello", PAID).await;
    let (_, unassigned) = lookup(&sim, "%2B12005550100", PAID).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(short["valid"], false);
    assert_eq!(short["validation_errors"], json!(["TOO_SHORT"]));
    assert_eq!(short["line_type_intelligence"], Value::Null);
    assert_eq!(garbage["validation_errors"], json!(["NOT_A_NUMBER"]));
    assert_eq!(
        unassigned["validation_errors"],
        json!(["INVALID_BUT_POSSIBLE"])
    );
    assert_eq!(sim.paid_lookups(), 0);
}

#[tokio::test]
async fn the_line_type_follows_the_last_two_digits() {
    let sim = simulator(TwilioConfig::default()).await;
    let expected = [
        ("%2B19165550179", "mobile"),
        ("%2B19165550185", "landline"),
        ("%2B19165550191", "nonFixedVoip"),
        ("%2B19165550195", "fixedVoip"),
        ("%2B19165550197", "pager"),
        ("%2B19165550198", "voicemail"),
        ("%2B19165550199", "unknown"),
    ];

    for (number, line_type) in expected {
        let (_, body) = lookup(&sim, number, PAID).await;

        assert_eq!(
            body["line_type_intelligence"]["type"], line_type,
            "{number}"
        );
    }
    assert_eq!(sim.paid_lookups(), 7);
}

#[tokio::test]
async fn a_lookup_without_the_paid_package_is_free_and_unknown_packages_are_null() {
    let sim = simulator(TwilioConfig::default()).await;

    let (_, free) = lookup(&sim, "%2B19165550123", "").await;
    let (_, other) = lookup(&sim, "%2B19165550123", "?Fields=caller_name,made_up").await;

    assert_eq!(free["valid"], true);
    assert_eq!(free["line_type_intelligence"], Value::Null);
    assert_eq!(other["caller_name"], Value::Null);
    assert_eq!(other["line_type_intelligence"], Value::Null);
    assert_eq!(sim.paid_lookups(), 0);
}

#[tokio::test]
async fn paid_lookups_are_counted_per_number() {
    let sim = simulator(TwilioConfig::default()).await;

    lookup(&sim, "%2B19165550123", PAID).await;
    lookup(&sim, "%2B19165550123", PAID).await;
    lookup(
        &sim,
        "(916)%20555-0100",
        "?Fields=line_type_intelligence&CountryCode=US",
    )
    .await;

    let by_phone = sim.lookups_by_phone();
    assert_eq!(by_phone["+19165550123"], 2);
    assert_eq!(by_phone["+19165550100"], 1);
    assert_eq!(by_phone.len(), 2);
    assert_eq!(sim.paid_lookups(), 3);
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_a_401_with_code_20003() {
    let sim = simulator(TwilioConfig::default()).await;
    let url = format!("{}/v2/PhoneNumbers/%2B19165550123{PAID}", sim.url());

    let wrong = client()
        .get(&url)
        .basic_auth("ACsimulator", Some("guess"))
        .send();
    let wrong = wrong.await.unwrap();
    let missing = client().get(&url).send().await.unwrap();

    for response in [wrong, missing] {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({
                "code": 20003,
                "message": "Authenticate",
                "more_info": "https://www.twilio.com/docs/errors/20003",
                "status": 401,
            })
        );
    }
    assert_eq!(sim.paid_lookups(), 0);
}

#[tokio::test]
async fn an_error_rate_of_one_answers_every_lookup_with_a_twilio_500() {
    let sim = simulator(TwilioConfig::default()).await;
    sim.set_error_rate(1.0);

    let (status, body) = lookup(&sim, "%2B19165550123", PAID).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["code"], 20500);
    assert_eq!(body["status"], 500);
    assert_eq!(sim.paid_lookups(), 0);
}

#[tokio::test]
async fn lookups_over_the_concurrency_limit_get_a_429_with_code_20429() {
    let sim = simulator(TwilioConfig {
        latency: Duration::from_millis(150),
        max_concurrent: Some(1),
        ..Default::default()
    })
    .await;

    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let base = sim.url();
        burst.spawn(async move { lookup_at(&base, "%2B19165550123", PAID).await });
    }
    let answers = burst.join_all().await;

    let refused: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    let served = answers.len() - refused.len();
    assert!(served >= 1, "some lookup must get through");
    assert!(
        !refused.is_empty(),
        "a burst past the limit must be refused"
    );
    for (_, headers, body) in &refused {
        assert_eq!(body["code"], 20429);
        let in_flight: usize = headers["twilio-concurrent-requests"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(in_flight > 1);
    }
    assert_eq!(sim.paid_lookups(), served as u64);
}

#[tokio::test]
async fn every_lookup_reports_the_lookups_in_flight() {
    let sim = simulator(TwilioConfig::default()).await;

    let (_, headers, _) = lookup_at(&sim.url(), "%2B19165550123", PAID).await;

    assert_eq!(headers["twilio-concurrent-requests"], "1");
}

#[tokio::test]
async fn a_path_twilio_does_not_serve_is_a_404_with_code_20404() {
    let sim = simulator(TwilioConfig::default()).await;

    let response = client()
        .get(format!("{}/v1/Nothing", sim.url()))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], 20404);
}
