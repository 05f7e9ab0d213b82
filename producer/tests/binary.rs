//! The producer binary as an operator runs it from cron.

use std::process::Command;

#[test]
fn once_with_the_broker_unreachable_exits_non_zero_naming_the_address() {
    let output = Command::new(env!("CARGO_BIN_EXE_canotify-producer"))
        .args([
            "--once",
            "--amqp-url",
            "amqp://guest:s3cret@127.0.0.1:1/%2f",
        ])
        .args(["--schema", "producer_binary_test_unused"])
        .env("CANOTIFY_LOG_FORMAT", "text")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot reach RabbitMQ at amqp://127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
}

#[test]
fn a_bad_schema_name_is_refused_before_anything_runs() {
    let output = Command::new(env!("CARGO_BIN_EXE_canotify-producer"))
        .args(["--once", "--schema", "Robert'); DROP TABLE cases;--"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(stderr.contains("schema name"), "{stderr}");
}
