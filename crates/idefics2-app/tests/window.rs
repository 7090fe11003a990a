//! The desktop app in a real window: Xvfb (an X server without a screen) and the GPU path on
//! whatever adapter wgpu finds (lavapipe here). The app opens the default model, gets one image
//! and a question through its scripted session (the composer's own calls), answers, saves a
//! screenshot of the rendered window and closes. The answer must be the one the library gives
//! for the same request on the CPU (the same token ids, log-probabilities within 1e-3), and the
//! right one for the trained demo model.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::{DType, Device};
use idefics2::pipeline::{Pipeline, Prompt, Request};
use idefics2::processor::{ChatMessage, ContentPart, ImageOptions, load_image};

const QUESTION: &str = "What color is the shape?";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Kills the X server when the test ends, however it ends.
struct Xvfb(Child);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_xvfb(display: u32) -> Xvfb {
    let child = Command::new("Xvfb")
        .args([
            &format!(":{display}"),
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "Xvfb is needed for the window test (apt-get install -y xvfb; .ci/run installs it)",
        );
    let socket = PathBuf::from(format!("/tmp/.X11-unix/X{display}"));
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "Xvfb :{display} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Xvfb(child)
}

/// What the library answers on the CPU device for the same image and question: the text, the
/// token ids and their log-probabilities.
fn library_answer(image: &Path) -> (String, Vec<u32>, Vec<f32>) {
    let device = Device::flex();
    let model = repo().join("assets/idefics2-tiny-shapes");
    let pipeline = Pipeline::load(&model, &device, DType::F32).expect("default model");
    let request = Request {
        prompt: Prompt::Chat(vec![ChatMessage::new(
            "user",
            vec![ContentPart::Image, ContentPart::text(QUESTION)],
        )]),
        images: vec![load_image(image).expect("sample image")],
    };
    let options = ImageOptions {
        do_image_splitting: Some(false),
        ..ImageOptions::default()
    };
    let input = pipeline.prepare(&[request], &options).expect("prepare");
    let generation = pipeline.generation_options(64);
    let output = pipeline
        .model
        .generate(&input, &generation, |_| ControlFlow::Continue(()))
        .expect("generate");
    let text = pipeline
        .decode(&output.tokens[0])
        .expect("decode")
        .trim()
        .to_owned();
    (text, output.tokens[0].clone(), output.logprobs[0].clone())
}

/// The report's ids equal the library's and its log-probabilities are within 1e-3.
fn assert_same_tokens(what: &str, report: &serde_json::Value, ids: &[u32], logprobs: &[f32]) {
    let got_ids: Vec<u64> = report["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no ids in {report}"))
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect();
    let want_ids: Vec<u64> = ids.iter().map(|&i| u64::from(i)).collect();
    assert_eq!(got_ids, want_ids, "{what}: token ids");
    let got_logprobs: Vec<f64> = report["logprobs"]
        .as_array()
        .expect("logprobs")
        .iter()
        .map(|v| v.as_f64().expect("logprob"))
        .collect();
    assert_eq!(got_logprobs.len(), logprobs.len(), "{what}: logprobs");
    let worst = got_logprobs
        .iter()
        .zip(logprobs)
        .map(|(g, w)| (g - f64::from(*w)).abs())
        .fold(0.0, f64::max);
    println!(
        "{what}: {} ids equal, logprobs within {worst:.2e}",
        ids.len()
    );
    assert!(worst <= 1e-3, "{what}: logprobs differ by {worst}");
}

#[test]
fn window_answers_a_question_about_a_dropped_image() {
    let image = repo().join("assets/samples/shapes.png");
    let (expected, ids, logprobs) = library_answer(&image);
    assert_eq!(
        expected, "red",
        "the demo model's answer for the sample image"
    );

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("app-window");
    std::fs::create_dir_all(&out).expect("output dir");
    let (shot, report) = (out.join("app-native.png"), out.join("report.json"));
    let _ = std::fs::remove_file(&shot);
    let _ = std::fs::remove_file(&report);

    let display = 90 + std::process::id() % 9;
    let _xvfb = start_xvfb(display);
    let mut app = Command::new(env!("CARGO_BIN_EXE_idefics2-app"))
        .env("DISPLAY", format!(":{display}"))
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_RUNTIME_DIR", &out)
        .arg("--send-image")
        .arg(&image)
        .args(["--ask", QUESTION, "--exit"])
        // The model on the window's adapter (lavapipe in CI), which auto would pass over.
        .args(["--device", "gpu"])
        .arg("--screenshot")
        .arg(&shot)
        .arg("--report")
        .arg(&report)
        .spawn()
        .expect("start idefics2-app");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = app.try_wait().expect("wait for the app") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(600) {
            let _ = app.kill();
            panic!("the app did not answer within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "idefics2-app exited with {status}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written"))
            .expect("report is JSON");
    println!("window report: {report}");
    assert_eq!(
        report["error"],
        serde_json::Value::Null,
        "the app showed an error"
    );
    assert_eq!(report["answer"].as_str(), Some(expected.as_str()));
    assert_same_tokens("window (Regenerate)", &report, &ids, &logprobs);
    assert_same_tokens("window (first answer)", &report["first"], &ids, &logprobs);
    // The library's figures, for the browser test (web/browser-test.mjs) to compare with.
    std::fs::write(
        out.join("library.json"),
        serde_json::json!({ "answer": expected, "ids": ids, "logprobs": logprobs }).to_string(),
    )
    .expect("library.json");
    assert!(
        report["tokens_per_second"]
            .as_f64()
            .is_some_and(|t| t > 0.0)
    );

    // The screenshot is the rendered window, not an empty frame: many distinct colours.
    let pixels = image::open(&shot).expect("screenshot saved").to_rgb8();
    let mut colours: Vec<[u8; 3]> = pixels.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        pixels.width() >= 800 && colours.len() > 50,
        "screenshot {}x{} with {} colours",
        pixels.width(),
        pixels.height(),
        colours.len()
    );
    println!("screenshot: {}", shot.display());
}
