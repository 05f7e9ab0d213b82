//! The writer binary as an operator runs it.

use std::process::Command;

#[test]
fn an_unreachable_database_exits_non_zero_naming_the_address_without_the_password() {
    let output = Command::new(env!("CARGO_BIN_EXE_canotify-writer"))
        .args([
            "--database-url",
            "postgres://canotify:s3cret@127.0.0.1:2/warehouse",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot reach PostgreSQL at postgres://127.0.0.1:2/warehouse"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
}

#[test]
fn an_invalid_batch_size_is_a_clear_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_canotify-writer"))
        .args(["--write-batch-size", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("--write-batch-size"), "{stderr}");
}
