//! TLS to the broker goes through rustls with the ring provider.

use canotify_common::Secret;
use canotify_common::broker;
use canotify_common::telemetry::Chain;

#[tokio::test]
async fn an_amqps_url_is_spoken_as_tls() {
    // The machine's broker listens for plain AMQP on 5672, so a TLS client
    // hello there is refused; what matters is that it was a TLS handshake
    // that failed, not a missing crypto provider or TLS support.
    let err = broker::connect(
        &Secret::new("amqps://guest:guest@127.0.0.1:5672/%2f"),
        "canotify-tls-test",
    )
    .await
    .unwrap_err();

    // rustls's word for a peer that answered a client hello with something
    // other than TLS.
    let message = Chain(&err).to_string();
    assert!(message.contains("InvalidContentType"), "{message}");
    assert!(!message.contains("guest:guest"), "{message}");
}

#[test]
fn no_crate_builds_the_aws_lc_crypto_library() {
    // One crypto provider, ring, for every TLS client: lapin's `rustls`
    // feature would also build aws-lc, a second provider that needs cmake
    // and a C toolchain to build.
    let lock =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();

    for crate_name in ["aws-lc-rs", "aws-lc-sys"] {
        assert!(
            !lock.contains(&format!("name = \"{crate_name}\"")),
            "Cargo.lock holds {crate_name}"
        );
    }
    assert!(lock.contains("name = \"ring\""));
}
