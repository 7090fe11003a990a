//! `exit_on_panic`: a panic on a background thread (as wgpu's and burn's threads do on a lost
//! adapter) ends the process with code 101 instead of leaving it waiting for ever, and
//! `catch_panics` still turns a panic into an error. The child runs this same test binary.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

const CHILD: &str = "IDEFICS2_PANIC_TEST_CHILD";

#[test]
fn a_panic_on_a_background_thread_ends_the_process() {
    if std::env::var_os(CHILD).is_some() {
        idefics2::exit_on_panic();
        let caught = idefics2::catch_panics(|| panic!("caught on purpose"));
        assert!(caught.is_err(), "catch_panics returns the panic");
        println!("child: survived a caught panic");
        std::thread::spawn(|| panic!("background thread panics on purpose"));
        // Without exit_on_panic the process would sit here, as a caller waiting on a dead
        // thread does.
        std::thread::sleep(Duration::from_secs(120));
        std::process::exit(0);
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "panics::a_panic_on_a_background_thread_ends_the_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the child still runs after a panic on a background thread"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(status.code(), Some(101), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("child: survived a caught panic"),
        "{stdout}"
    );
    assert!(
        stderr.contains("background thread panics on purpose"),
        "{stderr}"
    );
}
