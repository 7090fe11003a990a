//! The `idefics2` command line end to end on the fixture checkpoints: the token ids it prints
//! equal transformers 4.54.1's (prompt ids from the reference processor, greedy ids from its
//! generate), batches, chats, hub-cache resolution offline, and one-line errors.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn image(name: &str) -> String {
    fixtures().join("images").join(name).display().to_string()
}

fn model(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

fn idefics2(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idefics2"));
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Reference ids of one case: (prompt ids without padding, greedy ids) per row.
fn reference(checkpoint: &str, case: &str) -> Vec<(Vec<u64>, Vec<u64>)> {
    let path = fixtures()
        .join(checkpoint)
        .join("reference")
        .join(format!("{case}.safetensors"));
    let bytes = std::fs::read(path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: &str| -> (Vec<i64>, Vec<usize>) {
        let view = tensors.tensor(name).unwrap();
        let values = view
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (values, view.shape().to_vec())
    };
    let (ids, shape) = read("input_ids");
    let (mask, _) = read("attention_mask");
    let (greedy, gshape) = read("greedy_ids");
    (0..shape[0])
        .map(|row| {
            let prompt = (0..shape[1])
                .filter(|&i| mask[row * shape[1] + i] != 0)
                .map(|i| ids[row * shape[1] + i] as u64)
                .collect();
            let generated = greedy[row * gshape[1]..(row + 1) * gshape[1]]
                .iter()
                .filter(|&&t| t >= 0)
                .map(|&t| t as u64)
                .collect();
            (prompt, generated)
        })
        .collect()
}

fn ids(value: &Value, key: &str) -> Vec<u64> {
    value[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn assert_matches_reference(line: &Value, expected: &(Vec<u64>, Vec<u64>)) {
    assert_eq!(ids(line, "input_ids"), expected.0, "prompt ids");
    assert_eq!(ids(line, "generated_ids"), expected.1, "greedy ids");
    assert_eq!(line["logprobs"].as_array().unwrap().len(), expected.1.len());
    for key in ["load", "preprocess", "prefill", "decode"] {
        assert!(
            line["timings"][key].as_f64().unwrap() >= 0.0,
            "timings.{key}"
        );
    }
    assert!(line["text"].is_string());
}

const ONE_IMAGE_PROMPT: &str = "User:<image>What is in this image?<end_of_utterance>\nAssistant:";

#[test]
fn raw_prompt_with_an_image_matches_the_reference_on_cpu() {
    for checkpoint in ["tiny-f32", "tiny-bf16-sharded"] {
        let out = idefics2(
            &[
                "generate",
                "--model",
                &model(checkpoint),
                "--prompt",
                ONE_IMAGE_PROMPT,
                "--image",
                &image("a.png"),
                "--max-new-tokens",
                "10",
                "--json",
                "--device",
                "cpu",
            ],
            &[],
        );
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1);
        assert_matches_reference(&lines[0], &reference(checkpoint, "one_image")[0]);
        assert_eq!(lines[0]["device"], "cpu f32");
    }
}

#[test]
fn streaming_prints_the_text_and_a_summary() {
    let out = idefics2(
        &[
            "generate",
            "--model",
            &model("tiny-f32"),
            "--prompt",
            ONE_IMAGE_PROMPT,
            "--image",
            &image("a.png"),
            "--max-new-tokens",
            "10",
        ],
        &[],
    );
    assert!(out.status.success());
    let json = json_lines(&one_image_json(&model("tiny-f32"), &[]));
    let streamed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        streamed.trim_end_matches('\n'),
        json[0]["text"].as_str().unwrap()
    );
    let summary = String::from_utf8(out.stderr).unwrap();
    assert!(
        summary.contains("10 tokens")
            && summary.contains("tok/s")
            && summary.contains("first token"),
        "{summary}"
    );
}

#[test]
fn chat_messages_render_through_the_template() {
    let dir = tempdir("chat");
    let chat = dir.join("chat.json");
    std::fs::write(
        &chat,
        r#"[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}]"#,
    )
    .unwrap();
    let out = idefics2(
        &[
            "generate",
            "--model",
            &model("tiny-f32"),
            "--chat",
            chat.to_str().unwrap(),
            "--image",
            &image("a.png"),
            "--max-new-tokens",
            "10",
            "--json",
        ],
        &[],
    );
    assert_matches_reference(&json_lines(&out)[0], &reference("tiny-f32", "one_image")[0]);
}

#[test]
fn a_batch_runs_left_padded_and_prints_one_line_per_request() {
    let dir = tempdir("batch");
    let batch = dir.join("requests.jsonl");
    let lines = [
        serde_json::json!({"prompt": "User:<image>Describe it.<end_of_utterance>\nAssistant:", "images": [image("b.png")]}),
        serde_json::json!({"prompt": "User:<image>and<image>What differs between these two pictures in detail?<end_of_utterance>\nAssistant:", "images": [image("a.png"), image("c.png")]}),
    ];
    std::fs::write(
        &batch,
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let out = idefics2(
        &[
            "generate",
            "--model",
            &model("tiny-f32"),
            "--batch",
            batch.to_str().unwrap(),
            "--max-new-tokens",
            "10",
            "--json",
        ],
        &[],
    );
    let json = json_lines(&out);
    let expected = reference("tiny-f32", "batch_left_pad");
    assert_eq!(json.len(), 2);
    for (line, want) in json.iter().zip(&expected) {
        assert_matches_reference(line, want);
    }
}

/// `generate --json` of the one-image prompt on `model` (10 new tokens), with `extra` flags.
fn one_image_json(model_dir: &str, extra: &[&str]) -> Output {
    let picture = image("a.png");
    let mut args = vec![
        "generate",
        "--model",
        model_dir,
        "--prompt",
        ONE_IMAGE_PROMPT,
        "--image",
        &picture,
        "--max-new-tokens",
        "10",
        "--json",
    ];
    args.extend(extra);
    idefics2(&args, &[])
}

#[test]
fn gpu_matches_the_reference() {
    let out = one_image_json(&model("tiny-f32"), &["--device", "gpu"]);
    let lines = json_lines(&out);
    assert_matches_reference(&lines[0], &reference("tiny-f32", "one_image")[0]);
    assert_eq!(lines[0]["device"], "gpu f32");
    // The summary line names the adapter and its backend (lavapipe in CI: Vulkan, never GL).
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("gpu f32 (") && summary.contains(" on Vulkan"),
        "{summary}"
    );

    // f16 weights and activations: the same greedy ids on this checkpoint.
    let out = one_image_json(&model("tiny-f32"), &["--device", "gpu", "--dtype", "f16"]);
    let lines = json_lines(&out);
    assert_matches_reference(&lines[0], &reference("tiny-f32", "one_image")[0]);
    assert_eq!(lines[0]["device"], "gpu f16");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README's first command, run from a directory that is not the repository: the binary finds
/// the default model it embeds (unpacked into the data directory) and answers `red`.
#[test]
fn the_readme_question_is_answered_from_any_directory() {
    let elsewhere = tempdir("elsewhere");
    let data = tempdir("data");
    let shapes = repo().join("assets/samples/shapes.png");
    let out = Command::new(env!("CARGO_BIN_EXE_idefics2"))
        .args(["generate", "--image"])
        .arg(&shapes)
        .args(["--ask", "What color is the shape?"])
        .current_dir(&elsewhere.0)
        .env("IDEFICS2_DATA_DIR", &data.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "red");
    let unpacked: Vec<_> = std::fs::read_dir(data.0.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert!(unpacked[0].starts_with("idefics2-tiny-shapes-"));
    // `check` on the default model works the same way.
    let out = idefics2(
        &["check"],
        &[("IDEFICS2_DATA_DIR", &data.0.display().to_string())],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("all names and shapes match"));
}

/// `quantize` writes a checkpoint that loads as saved and answers exactly as quantizing at load
/// (`--quant`) does; both stay close to the float model (the first greedy token agrees).
#[test]
fn quantize_writes_a_checkpoint_that_answers_as_quant_at_load() {
    let out_dir = tempdir("quantized");
    let saved = out_dir.0.join("q8");
    let out = idefics2(
        &[
            "quantize",
            "--model",
            &model("tiny-f32"),
            "--quant",
            "q8",
            "--quant-group",
            "16",
            "--out",
            &saved.display().to_string(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("linear layers as q8"));
    let run = |model: &str, quant: &[&str]| {
        let lines = json_lines(&one_image_json(model, quant));
        ids(&lines[0], "generated_ids")
    };
    let at_load = run(
        &model("tiny-f32"),
        &["--quant", "q8", "--quant-group", "16"],
    );
    let from_saved = run(&saved.display().to_string(), &[]);
    assert_eq!(from_saved, at_load);
    assert_eq!(at_load.len(), 10);
    let float = &reference("tiny-f32", "one_image")[0].1;
    assert_eq!(at_load[0], float[0], "q8 {at_load:?} against f32 {float:?}");
    // A saved quantized checkpoint cannot be quantized again at load.
    let error = fails(
        &[
            "generate",
            "--model",
            &saved.display().to_string(),
            "--prompt",
            "Hi",
            "--quant",
            "q4",
        ],
        &[],
    );
    assert!(error.contains("quant"), "{error}");
}

/// `bench` measures the default model and reports its figures as JSON.
#[test]
fn bench_reports_speed_figures() {
    let out = idefics2(
        &[
            "bench",
            "--model",
            &model("tiny-f32"),
            "--image-size",
            "64",
            "--decode-tokens",
            "4",
            "--runs",
            "1",
            "--splitting",
            "off",
            "--json",
            "--device",
            "cpu",
            "--profile",
        ],
        &[],
    );
    let report = &json_lines(&out)[0];
    assert_eq!(report["device"], "cpu f32");
    assert!(report["weight_bytes"].as_u64().unwrap() > 0);
    // The profile names the model's parts, and its rows add up to the profiled times.
    let profile = &report["profile"];
    let rows = profile["rows"].as_array().unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for kind in [
        "vision linear",
        "connector linear",
        "text linear q/k/v",
        "text linear down",
        "attention",
        "norms",
        "lm_head",
        "sampling (host)",
        "logits readback",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    for (field, total) in [
        ("prefill_seconds", "prefill_seconds"),
        ("decode_seconds_per_token", "decode_seconds_per_token"),
    ] {
        let sum: f64 = rows.iter().map(|r| r[field].as_f64().unwrap()).sum();
        let total = profile[total].as_f64().unwrap();
        assert!(
            total > 0.0 && sum >= total * 0.999,
            "{field}: rows {sum}, total {total}"
        );
    }
    let settings = report["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 1);
    assert_eq!(settings[0]["image_splitting"], false);
    let fields = settings[0].as_object().unwrap();
    let positive = fields
        .iter()
        .filter(|(_, v)| v.as_f64().is_some_and(|x| x > 0.0))
        .count();
    assert!(positive >= 3, "{fields:?}");
}

/// Lays out `models--org--tiny/{refs/main, snapshots/<commit>/...}` as the hub cache does.
fn hub_cache(name: &str, skip: &[&str]) -> TempDir {
    hub_cache_of(name, "tiny-bf16-sharded", "models--org--tiny", skip)
}

/// [`hub_cache`] of fixture `checkpoint` as the hub's repository directory `repo_name`.
fn hub_cache_of(name: &str, checkpoint: &str, repo_name: &str, skip: &[&str]) -> TempDir {
    let cache = tempdir(name);
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.join(repo_name);
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(fixtures().join(checkpoint)).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name();
        if entry.path().is_file() && !skip.contains(&file.to_str().unwrap()) {
            std::fs::copy(entry.path(), snapshot.join(&file)).unwrap();
        }
    }
    cache
}

#[test]
fn hub_ids_resolve_from_the_cache_offline() {
    let cache = hub_cache("hub-ok", &[]);
    let env = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let out = idefics2(
        &[
            "generate",
            "--model",
            "org/tiny",
            "--prompt",
            ONE_IMAGE_PROMPT,
            "--image",
            &image("a.png"),
            "--max-new-tokens",
            "10",
            "--json",
        ],
        &env,
    );
    assert_matches_reference(
        &json_lines(&out)[0],
        &reference("tiny-bf16-sharded", "one_image")[0],
    );
    // HF_HOME/hub is the cache when HF_HUB_CACHE is unset.
    let home = tempdir("hf-home");
    std::fs::rename(&cache, home.join("hub")).unwrap();
    let env = [("HF_HOME", home.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")];
    let out = idefics2(&["check", "--model", "org/tiny"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cache = hub_cache("hub-missing", &["model-00002-of-00003.safetensors"]);
    let env = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let err = fails(&["generate", "--model", "org/tiny", "--prompt", "hi"], &env);
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("model-00002-of-00003.safetensors"),
        "{err}"
    );
    let err = fails(
        &["generate", "--model", "org/other", "--prompt", "hi"],
        &env,
    );
    assert!(err.contains("models--org--other"), "{err}");
}

/// Runs a failing command: non-zero exit, one `error:` line naming the problem, no panic.
fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = idefics2(args, env);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    err
}

#[test]
fn bad_input_gives_one_clear_line() {
    let m = model("tiny-f32");
    let dir = tempdir("errors");
    // The processor's one validation of image options, which the app and the server share.
    for (flag, value) in [("--longest-edge", "0"), ("--shortest-edge", "5000")] {
        let err = fails(
            &[
                "generate",
                "--model",
                &m,
                "--prompt",
                ONE_IMAGE_PROMPT,
                "--image",
                &image("a.png"),
                flag,
                value,
            ],
            &[],
        );
        let name = flag.trim_start_matches("--").replace('-', " ");
        assert!(
            err.contains(&format!(
                "{name} {value} is out of range: 14 to 4096 pixels"
            )),
            "{err}"
        );
    }
    let err = fails(
        &["serve", "--model", &m, "--longest-edge", "0", "--port", "0"],
        &[],
    );
    assert!(err.contains("longest edge 0 is out of range"), "{err}");
    let err = fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            ONE_IMAGE_PROMPT,
            "--image",
            "/no/such.png",
        ],
        &[],
    );
    assert!(err.contains("/no/such.png"), "{err}");
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            ONE_IMAGE_PROMPT,
            "--image",
            corrupt.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("corrupt.png"), "{err}");
    let err = fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "no placeholder",
            "--image",
            &image("a.png"),
        ],
        &[],
    );
    assert!(
        err.contains("placeholder") || err.contains("<image>"),
        "{err}"
    );
    let bad_json = dir.join("bad.json");
    std::fs::write(&bad_json, "[{\"role\": ").unwrap();
    let err = fails(
        &[
            "generate",
            "--model",
            &m,
            "--chat",
            bad_json.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("bad.json"), "{err}");
    let bad_batch = dir.join("bad.jsonl");
    std::fs::write(&bad_batch, "{\"prompt\": \"a\"}\n{\"text\": 1}\n").unwrap();
    let err = fails(
        &[
            "generate",
            "--model",
            &m,
            "--batch",
            bad_batch.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("bad.jsonl line 2"), "{err}");
    let err = fails(
        &["generate", "--model", "/no/model/dir", "--prompt", "hi"],
        &[],
    );
    assert!(err.contains("/no/model/dir"), "{err}");
    let empty_model = dir.join("empty-model");
    std::fs::create_dir_all(&empty_model).unwrap();
    let err = fails(
        &[
            "generate",
            "--model",
            empty_model.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &[],
    );
    assert!(err.contains("config.json"), "{err}");
    let err = fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "100000",
        ],
        &[],
    );
    assert!(err.contains("512"), "{err}");
}

/// A fresh directory under the system's temporary folder, removed again when the test ends.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("idefics2-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

#[test]
fn interactive_chat_streams_answers_and_keeps_history() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_idefics2"))
        .args([
            "chat",
            "--model",
            &model("tiny-f32"),
            "--max-new-tokens",
            "10",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "/image {}\nWhat is in this image?\nAnd again?\n/image /no/such.png\n/splitting on\nAnd now?\n/reset\n/bogus\n/quit\n",
        image("a.png")
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    // The first answer is the reference's greedy continuation of the same chat.
    let json = json_lines(&one_image_json(&model("tiny-f32"), &[]));
    let first = json[0]["text"].as_str().unwrap();
    assert!(stdout.contains(first), "stdout {stdout:?} lacks {first:?}");
    // Three answers were produced (later turns see the history), errors kept the session alive.
    assert_eq!(stderr.matches("tokens, first after").count(), 3, "{stderr}");
    // The second turn continued from the first turn's cache (its image was not encoded again).
    assert!(stderr.contains("prompt tokens reused"), "{stderr}");
    assert!(
        stderr.contains("/no/such.png")
            && stderr.contains("image splitting on")
            && stderr.contains("history cleared")
    );
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

/// Without a Vulkan driver (the loader pointed at none) `--device gpu` is one clear error that
/// names what to install, and the process ends: wgpu's OpenGL adapter is never taken.
#[test]
fn gpu_without_a_vulkan_driver_names_what_to_install() {
    let no_driver = [
        ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
        ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
    ];
    let error = fails(
        &[
            "generate",
            "--model",
            &model("tiny-f32"),
            "--prompt",
            "Hi",
            "--device",
            "gpu",
        ],
        &no_driver,
    );
    assert!(
        error.contains("no Vulkan adapter found") && error.contains("mesa-vulkan-drivers"),
        "{error}"
    );
}

/// `--device auto` (the default) takes the CPU device when there is no GPU adapter, and when the
/// only adapter is a CPU one (lavapipe), and its summary line says which and why.
#[test]
fn auto_device_says_what_it_chose_and_why() {
    let args = [
        "generate",
        "--model",
        &model("tiny-f32"),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "2",
    ];
    let no_driver = [
        ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
        ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
    ];
    let out = idefics2(&args, &no_driver);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("cpu f32 [auto: no GPU adapter found]"),
        "{summary}"
    );
    let out = idefics2(&args, &[]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains(" [auto: "), "{summary}");
    if summary.contains("llvmpipe") {
        // CI: lavapipe is the only adapter, and the CPU device is faster than it.
        assert!(
            summary.contains("cpu f32 [auto: the only adapter, llvmpipe"),
            "{summary}"
        );
    }
    // Half precision on the CPU device: the linear weights in 16 bits, the arithmetic in f32.
    for (dtype, label) in [("f16", "cpu f16 weights"), ("bf16", "cpu bf16 weights")] {
        let out = idefics2(&[&args[..], &["--dtype", dtype]].concat(), &no_driver);
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{summary}");
        assert!(
            summary.contains(&format!("{label} [auto: no GPU adapter found]")),
            "{summary}"
        );
    }
    let error = fails(
        &[&args[..], &["--dtype", "bf16", "--device", "gpu"]].concat(),
        &[],
    );
    assert!(
        error.contains("--dtype bf16 runs on the CPU only (WGSL has no bf16)"),
        "{error}"
    );
}

/// `--model HuggingFaceM4/idefics2-8b-AWQ` opens an AWQ checkpoint from the hub cache (here the
/// tiny AWQ fixture in its place): `check` lists it as AWQ, the answer is transformers' (greedy),
/// and `--quant` on it is an error that says why.
#[test]
fn awq_checkpoint_opens_by_hub_id() {
    let cache = hub_cache_of(
        "hub-awq",
        "tiny-awq",
        "models--HuggingFaceM4--idefics2-8b-AWQ",
        &[],
    );
    let env = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let id = "HuggingFaceM4/idefics2-8b-AWQ";
    let out = idefics2(&["check", "--model", id], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("quantization: AWQ, 4 bits in groups of 16"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut args = vec![
        "generate",
        "--model",
        id,
        "--prompt",
        ONE_IMAGE_PROMPT,
        "--image",
    ];
    let picture = image("a.png");
    args.extend([
        picture.as_str(),
        "--max-new-tokens",
        "10",
        "--json",
        "--device",
        "cpu",
    ]);
    let out = idefics2(&args, &env);
    assert_matches_reference(&json_lines(&out)[0], &reference("tiny-awq", "one_image")[0]);
    let err = fails(
        &[
            "generate", "--model", id, "--prompt", "hi", "--quant", "q4", "--device", "cpu",
        ],
        &env,
    );
    assert!(err.contains("already quantized with AWQ"), "{err}");
}
