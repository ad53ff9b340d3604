//! A panic in tinyvmm ends the process with the documented status 6 and one message.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn tinyvmm_when_it_panics_then_exit_6_and_message_printed_once() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinyvmm"))
        .arg("validate")
        .arg("/nonexistent.json")
        .env("TINYVMM_TEST_PANIC", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tinyvmm did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();

    assert_eq!(status.code(), Some(6), "stderr: {stderr}");
    assert_eq!(
        stderr.matches("internal error (a bug)").count(),
        1,
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("TINYVMM_TEST_PANIC is set"),
        "stderr: {stderr}"
    );
}
