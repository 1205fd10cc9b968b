//! The `drhost` binary's own surface: help for every subcommand with the
//! exit codes. Also makes `cargo test --workspace` build the binary that
//! `tests/cli.rs` (package drhost-tests) drives.

use std::process::Command;

fn drhost(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drhost"))
        .args(args)
        .output()
        .expect("run drhost");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let (code, text) = drhost(&["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for cmd in ["describe", "plan", "run", "test", "audit"] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
    for sub in [
        &["run", "--help"][..],
        &["test", "--help"],
        &["audit", "--help"],
    ] {
        let (code, text) = drhost(sub);
        assert_eq!(code, Some(0), "{sub:?}: {text}");
        assert!(
            text.contains("Exit codes:") && text.contains("4  the plugin halted"),
            "{sub:?}: {text}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let (code, text) = drhost(&["run"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("RUNBOOK"), "{text}");
}
