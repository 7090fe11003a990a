//! `idefics2 serve` end to end: the real binary on a free port, on the default model and the CPU
//! device. Answers equal `idefics2 generate`'s greedy answers for the same prompts and images,
//! on TGI's and OpenAI's routes, streamed and whole, with 64 requests at once; limits give 429 and
//! a cancelled stream frees its slot; a table of malformed requests each gets a 4xx JSON answer;
//! and the `text_generation` and `openai` Python clients (`tests/server/clients.py`) work unchanged.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample(name: &str) -> PathBuf {
    repo().join("assets/samples").join(name)
}

fn data_uri(name: &str) -> String {
    let bytes = std::fs::read(sample(name)).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A running `idefics2 serve`, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        Self::start_on("cpu", extra)
    }

    fn start_on(device: &str, extra: &[&str]) -> Self {
        let data = std::env::temp_dir().join(format!("idefics2-serve-data-{}", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_idefics2"))
            .args(["serve", "--port", "0", "--device", device])
            .args(extra)
            .env("IDEFICS2_DATA_DIR", &data)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        let server = Self { child, port };
        let start = Instant::now();
        while server.get("/health").0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(300), "never healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(self.port, "GET", path, &[], b"")
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = http(self.port, "POST", path, &[], body.to_string().as_bytes());
        (status, parse(&text))
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// One HTTP/1.1 request on its own connection; the status and the (de-chunked) body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The JSON of each `data:` line of an SSE body.
fn sse_events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_owned())
        .collect()
}

/// What `idefics2 generate --json` answers for each request (a batch file of raw prompts and
/// chats): (text, generated ids).
fn cli_answers(lines: &[Value]) -> Vec<(String, Vec<u64>)> {
    let dir = std::env::temp_dir().join(format!("idefics2-serve-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let batch = dir.join("batch.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&batch, text.join("\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_idefics2"))
        .args([
            "generate",
            "--device",
            "cpu",
            "--json",
            "--max-new-tokens",
            "12",
            "--batch",
        ])
        .arg(&batch)
        .env("IDEFICS2_DATA_DIR", dir.join("data"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let answers: Vec<Value> = stdout.lines().rev().take(lines.len()).map(parse).collect();
    answers
        .into_iter()
        .rev()
        .map(|a| {
            let ids = a["generated_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            (a["text"].as_str().unwrap().to_owned(), ids)
        })
        .collect()
}

/// The questions of these tests: (image, question).
const QUESTIONS: [(&str, &str); 4] = [
    ("shapes.png", "What color is the shape?"),
    ("several.png", "How many shapes are there?"),
    ("tall.png", "What shape is it?"),
    ("wide.png", "What color is the shape?"),
];

fn raw_prompt(question: &str, image: &str) -> String {
    format!("User:{image}{question}<end_of_utterance>\nAssistant:")
}

struct Expected {
    /// Per question: the raw prompt's answer, then the chat's.
    raw: Vec<(String, Vec<u64>)>,
    chat: Vec<(String, Vec<u64>)>,
}

fn expected() -> Expected {
    let mut lines = Vec::new();
    for (image, question) in QUESTIONS {
        let path = sample(image).display().to_string();
        lines.push(json!({"prompt": raw_prompt(question, "<image>"), "images": [path]}));
        lines.push(json!({
            "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            "images": [path],
        }));
    }
    let answers = cli_answers(&lines);
    Expected {
        raw: answers.iter().step_by(2).cloned().collect(),
        chat: answers.iter().skip(1).step_by(2).cloned().collect(),
    }
}

fn tgi_body(index: usize, stream: bool) -> Value {
    let (image, question) = QUESTIONS[index];
    json!({
        "inputs": raw_prompt(question, &format!("![]({})", data_uri(image))),
        "parameters": {"max_new_tokens": 12, "details": true, "decoder_input_details": false, "stop": [],
                       "do_sample": false, "seed": null, "temperature": null, "top_p": null, "top_k": null,
                       "typical_p": null, "truncate": null, "watermark": false, "best_of": null,
                       "repetition_penalty": null, "frequency_penalty": null, "return_full_text": false,
                       "top_n_tokens": null, "grammar": null, "adapter_id": null},
        "stream": stream,
    })
}

fn chat_body(index: usize, stream: bool) -> Value {
    let (image, question) = QUESTIONS[index];
    json!({
        "model": "tgi",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(image)}},
            {"type": "text", "text": question},
        ]}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

fn ids_of(tokens: &Value) -> Vec<u64> {
    tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn serve_answers_as_generate_does() {
    let expected = expected();
    let server = Server::start(&[]);

    for index in 0..QUESTIONS.len() {
        let (text, ids) = &expected.raw[index];
        // TGI: `/generate` one object, `POST /` an array of one.
        let (status, body) = server.post("/generate", &tgi_body(index, false));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["generated_text"].as_str().unwrap(), text);
        assert_eq!(&ids_of(&body["details"]["tokens"]), ids);
        let reason = if ids.len() < 12 {
            "eos_token"
        } else {
            "length"
        };
        assert_eq!(body["details"]["finish_reason"], reason);
        assert_eq!(body["details"]["generated_tokens"], ids.len());
        // The same request again continues from the first one's cached prefix: the same tokens,
        // log-probabilities equal within float noise.
        let (status, array) = server.post("/", &tgi_body(index, false));
        assert_eq!(status, 200);
        assert_eq!(array[0]["generated_text"], body["generated_text"]);
        assert_eq!(
            ids_of(&array[0]["details"]["tokens"]),
            ids_of(&body["details"]["tokens"])
        );
        let logprobs = |v: &Value| -> Vec<f64> {
            v["details"]["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["logprob"].as_f64().unwrap())
                .collect()
        };
        for (a, b) in logprobs(&array[0]).iter().zip(logprobs(&body)) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }

        // TGI streamed: one event per token, the last with the text and details.
        let request = tgi_body(index, true);
        let (status, sse) = http(
            server.port,
            "POST",
            "/generate_stream",
            &[],
            request.to_string().as_bytes(),
        );
        assert_eq!(status, 200);
        let events: Vec<Value> = sse_events(&sse).iter().map(|e| parse(e)).collect();
        let streamed_ids: Vec<u64> = events
            .iter()
            .map(|e| e["token"]["id"].as_u64().unwrap())
            .collect();
        assert_eq!(&streamed_ids, ids);
        let last = events.last().unwrap();
        assert_eq!(last["generated_text"].as_str().unwrap(), text);
        assert_eq!(last["details"]["finish_reason"], reason);
        assert!(
            events[..events.len() - 1]
                .iter()
                .all(|e| e["generated_text"].is_null())
        );

        // OpenAI chat, whole and streamed.
        let (chat_text, chat_ids) = &expected.chat[index];
        let (status, body) = server.post("/v1/chat/completions", &chat_body(index, false));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(
            body["choices"][0]["message"]["content"].as_str().unwrap(),
            chat_text
        );
        assert_eq!(body["usage"]["completion_tokens"], chat_ids.len());
        let (status, sse) = http(
            server.port,
            "POST",
            "/v1/chat/completions",
            &[],
            chat_body(index, true).to_string().as_bytes(),
        );
        assert_eq!(status, 200);
        let events = sse_events(&sse);
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| parse(e))
            .collect();
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(&content, chat_text);
        let finishing = chunks
            .iter()
            .filter(|c| c["choices"][0]["finish_reason"].is_string())
            .count();
        assert_eq!(finishing, 1);
        assert_eq!(
            chunks.last().unwrap()["usage"]["completion_tokens"],
            chat_ids.len()
        );
    }

    // 16 clients x 4 requests at once, mixed questions and routes: each answer equals its
    // sequential answer.
    let port = server.port;
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let raw = expected.raw.clone();
            let chat = expected.chat.clone();
            std::thread::spawn(move || {
                for request in 0..4 {
                    let index = (client + request) % QUESTIONS.len();
                    if (client + request) % 2 == 0 {
                        let body = tgi_body(index, false).to_string();
                        let (status, text) = http(port, "POST", "/generate", &[], body.as_bytes());
                        assert_eq!(status, 200, "{text}");
                        assert_eq!(
                            parse(&text)["generated_text"].as_str().unwrap(),
                            raw[index].0
                        );
                    } else {
                        let body = chat_body(index, false).to_string();
                        let (status, text) =
                            http(port, "POST", "/v1/chat/completions", &[], body.as_bytes());
                        assert_eq!(status, 200, "{text}");
                        assert_eq!(
                            parse(&text)["choices"][0]["message"]["content"]
                                .as_str()
                                .unwrap(),
                            chat[index].0
                        );
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    // /tokenize: BOS, then the text's tokens with byte offsets into it.
    let (status, tokens) = server.post("/tokenize", &json!({"inputs": "What color?"}));
    assert_eq!(status, 200, "{tokens}");
    let tokens = tokens.as_array().unwrap();
    assert_eq!(tokens[0]["id"], 1);
    let text: String = tokens[1..]
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("");
    assert_eq!(text.replace(' ', ""), "Whatcolor?");
    assert_eq!(tokens.last().unwrap()["stop"], "What color?".len());
    // /info and /v1/models describe the loaded model and the limits.
    let (status, info) = server.get("/info");
    assert_eq!(status, 200);
    let info = parse(&info);
    assert_eq!(info["model_id"], "idefics2-tiny-shapes");
    assert_eq!(info["max_total_tokens"], 1024);
    assert_eq!(info["max_concurrent_requests"], 128);
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(parse(&models)["data"][0]["id"], "idefics2-tiny-shapes");
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("tgi_request_success"), "{metrics}");
    let reused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("idefics2_prefix_reused_tokens "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(
        reused.is_some_and(|r| r > 0.0),
        "no prefix was reused: {metrics}"
    );
    assert_eq!(server.get("/health").0, 200);

    // The Python clients, unchanged.
    let python = std::env::var("IDEFICS2_PYTHON").unwrap_or_else(|_| {
        panic!("IDEFICS2_PYTHON must name a Python with text-generation and openai (.ci/run installs them: tests/server/requirements.txt)")
    });
    let cases = json!({
        "url": server.url(),
        "cases": QUESTIONS.iter().enumerate().map(|(i, (image, question))| json!({
            "prompt": raw_prompt(question, &format!("![]({})", data_uri(image))),
            "question": question,
            "image": data_uri(image),
            "raw_text": expected.raw[i].0,
            "raw_ids": expected.raw[i].1,
            "chat_text": expected.chat[i].0,
        })).collect::<Vec<_>>(),
    });
    let cases_path =
        std::env::temp_dir().join(format!("idefics2-serve-cases-{}.json", std::process::id()));
    std::fs::write(&cases_path, cases.to_string()).unwrap();
    let output = Command::new(python)
        .arg(repo().join("tests/server/clients.py"))
        .arg(&cases_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The PNG chunk checksum (CRC-32, ISO 3309).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// (what is wrong, route, body, headers, expected status, expected error kind)
type BadRequest<'a> = (
    &'a str,
    &'a str,
    String,
    &'a [(&'a str, &'a str)],
    u16,
    &'a str,
);

#[test]
fn limits_cancellation_and_bad_requests() {
    let server = Server::start(&[
        "--max-concurrent-requests",
        "2",
        "--max-batch-size",
        "1",
        "--api-key",
        "secret",
        "--max-total-tokens",
        "1000",
        "--payload-limit",
        "400000",
        "--max-image-pixels",
        "1000000",
    ]);
    let port = server.port;
    let auth = [("Authorization", "Bearer secret")];
    let post = |path: &str, body: &str| http(port, "POST", path, &auth, body.as_bytes());
    let metric = |name: &str| -> f64 {
        let (_, text) = http(port, "GET", "/metrics", &auth, b"");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };

    // 20 requests at once against a queue of 2: some are refused with 429, the rest answered.
    let image = data_uri("shapes.png");
    let question = json!({"inputs": raw_prompt("What color is the shape?", &format!("![]({image})")), "parameters": {"max_new_tokens": 8}}).to_string();
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let body = question.clone();
            std::thread::spawn(move || {
                http(
                    port,
                    "POST",
                    "/generate",
                    &[("Authorization", "Bearer secret")],
                    body.as_bytes(),
                )
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    let refused = answers.iter().filter(|(s, _)| *s == 429).count();
    assert!(
        refused > 0 && answers.iter().any(|(s, _)| *s == 200),
        "{answers:?}"
    );
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 429, "{status} {body}");
        if *status == 429 {
            assert_eq!(parse(body)["error_type"], "overloaded");
        }
    }

    // A long sampled stream, dropped after its first event: the engine notices, cancels it and
    // frees its slot.
    let long = json!({"inputs": "User:Hello<end_of_utterance>\nAssistant:", "parameters": {"max_new_tokens": 980, "temperature": 5.0, "seed": 3}}).to_string();
    let before = metric("idefics2_requests_cancelled");
    {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "POST /generate_stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}", long.len()).unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("data:") {
            stream.read_exact(&mut byte).unwrap();
            seen.push(byte[0]);
        }
    }
    let start = Instant::now();
    while metric("idefics2_requests_cancelled") < before + 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the dropped stream was never cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric("tgi_queue_size"), 0.0);
    let (status, body) = post(
        "/generate",
        &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}).to_string(),
    );
    assert_eq!(status, 200, "{body}");

    // Malformed requests: each a 4xx with a JSON body in its route's shape.
    let big = "x".repeat(500_000);
    let huge_png = {
        // A valid PNG header that declares 100000 x 100000 pixels, and nothing else.
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&100_000u32.to_be_bytes());
        chunk.extend_from_slice(&100_000u32.to_be_bytes());
        chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\r".to_vec();
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        // An empty IDAT: the header is complete where the pixel data would start.
        png.extend_from_slice(&[0, 0, 0, 0]);
        png.extend_from_slice(b"IDAT");
        png.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        )
    };
    let tgi = |inputs: &str, parameters: Value| {
        json!({"inputs": inputs, "parameters": parameters}).to_string()
    };
    let chat = |content: Value, extra: Value| {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": content}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    let table: Vec<BadRequest> = vec![
        (
            "no API key",
            "/generate",
            tgi("Hi", json!({})),
            &[],
            401,
            "unauthorized",
        ),
        (
            "wrong API key",
            "/v1/chat/completions",
            chat(json!("Hi"), json!({})),
            &[("Authorization", "Bearer nope")],
            401,
            "unauthorized",
        ),
        (
            "not JSON",
            "/generate",
            "{inputs".into(),
            &auth,
            400,
            "invalid_request",
        ),
        (
            "inputs not a string",
            "/generate",
            json!({"inputs": 3}).to_string(),
            &auth,
            422,
            "invalid_request",
        ),
        (
            "no inputs",
            "/generate",
            json!({"parameters": {}}).to_string(),
            &auth,
            422,
            "invalid_request",
        ),
        (
            "empty inputs",
            "/generate",
            tgi("  ", json!({})),
            &auth,
            422,
            "validation",
        ),
        (
            "max_new_tokens 0",
            "/generate",
            tgi("Hi", json!({"max_new_tokens": 0})),
            &auth,
            422,
            "validation",
        ),
        (
            "max_new_tokens negative",
            "/generate",
            tgi("Hi", json!({"max_new_tokens": -1})),
            &auth,
            422,
            "invalid_request",
        ),
        (
            "over max_total_tokens",
            "/generate",
            tgi("Hi", json!({"max_new_tokens": 999})),
            &auth,
            422,
            "validation",
        ),
        (
            "temperature 0",
            "/generate",
            tgi("Hi", json!({"temperature": 0.0})),
            &auth,
            422,
            "validation",
        ),
        (
            "top_p 1",
            "/generate",
            tgi("Hi", json!({"top_p": 1.0})),
            &auth,
            422,
            "validation",
        ),
        (
            "top_k 0",
            "/generate",
            tgi("Hi", json!({"top_k": 0})),
            &auth,
            422,
            "validation",
        ),
        (
            "five stop sequences",
            "/generate",
            tgi("Hi", json!({"stop": ["a", "b", "c", "d", "e"]})),
            &auth,
            422,
            "validation",
        ),
        (
            "typical_p",
            "/generate",
            tgi("Hi", json!({"typical_p": 0.5})),
            &auth,
            422,
            "validation",
        ),
        (
            "image not base64",
            "/generate",
            tgi("![](data:image/png;base64,@@@)Hi", json!({})),
            &auth,
            422,
            "validation",
        ),
        (
            "image not an image",
            "/generate",
            tgi(
                &format!(
                    "![](data:image/png;base64,{})Hi",
                    base64::engine::general_purpose::STANDARD.encode(b"hello")
                ),
                json!({}),
            ),
            &auth,
            422,
            "validation",
        ),
        (
            "image over the pixel limit",
            "/generate",
            tgi(&format!("![]({huge_png})Hi"), json!({})),
            &auth,
            422,
            "validation",
        ),
        (
            "image path, not a URL",
            "/generate",
            tgi("![](/etc/passwd)Hi", json!({})),
            &auth,
            422,
            "validation",
        ),
        (
            "image URL refused",
            "/generate",
            tgi("![](http://127.0.0.1:9/x.png)Hi", json!({})),
            &auth,
            422,
            "validation",
        ),
        (
            "more placeholders than images",
            "/generate",
            tgi("<image>Hi", json!({})),
            &auth,
            422,
            "validation",
        ),
        (
            "prompt over max_input_tokens",
            "/generate",
            tgi(&"Hi ".repeat(1200), json!({"max_new_tokens": 1})),
            &auth,
            422,
            "validation",
        ),
        (
            "body over the payload limit",
            "/generate",
            tgi(&big, json!({})),
            &auth,
            413,
            "payload_too_large",
        ),
        (
            "chat without messages",
            "/v1/chat/completions",
            json!({"model": "m", "messages": []}).to_string(),
            &auth,
            422,
            "validation",
        ),
        (
            "chat content a number",
            "/v1/chat/completions",
            chat(json!(5), json!({})),
            &auth,
            422,
            "invalid_request",
        ),
        (
            "chat image part without url",
            "/v1/chat/completions",
            chat(json!([{"type": "image_url", "image_url": {}}]), json!({})),
            &auth,
            422,
            "invalid_request",
        ),
        (
            "chat n 2",
            "/v1/chat/completions",
            chat(json!("Hi"), json!({"n": 2})),
            &auth,
            422,
            "validation",
        ),
        (
            "chat top_p 0",
            "/v1/chat/completions",
            chat(json!("Hi"), json!({"top_p": 0})),
            &auth,
            422,
            "validation",
        ),
        (
            "chat max_tokens 0",
            "/v1/chat/completions",
            chat(json!("Hi"), json!({"max_tokens": 0})),
            &auth,
            422,
            "validation",
        ),
        (
            "chat two images, one placeholder",
            "/v1/chat/completions",
            chat(
                json!([{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "<image>"}]),
                json!({}),
            ),
            &auth,
            422,
            "validation",
        ),
        (
            "completions prompt list of two",
            "/v1/completions",
            json!({"model": "m", "prompt": ["a", "b"]}).to_string(),
            &auth,
            422,
            "validation",
        ),
        (
            "unknown route",
            "/v2/nothing",
            "{}".into(),
            &auth,
            404,
            "not_found",
        ),
    ];
    let mut report = String::from("| request | status | error |\n| --- | --- | --- |\n");
    for (name, path, body, headers, status, kind) in &table {
        let (got, text) = http(port, "POST", path, headers, body.as_bytes());
        let value = parse(&text);
        let got_kind = if path.starts_with("/v1/") {
            &value["error"]["code"]
        } else {
            &value["error_type"]
        };
        let message = if path.starts_with("/v1/") {
            &value["error"]["message"]
        } else {
            &value["error"]
        };
        assert_eq!(
            (got, got_kind.as_str().unwrap_or("")),
            (*status, *kind),
            "{name}: {text}"
        );
        assert!(
            message.as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {text}"
        );
        report.push_str(&format!(
            "| {name} | {got} | {} |\n",
            message.as_str().unwrap_or("").replace('|', "/")
        ));
    }
    println!("{report}");
    assert!(
        report.contains("is 100000x100000 (10000000000 pixels), over the limit of 1000000 pixels"),
        "{report}"
    );
    // Still answering.
    let (status, body) = post("/generate", &tgi("Hi", json!({"max_new_tokens": 2})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get("/health").0, 200);
}

/// A local HTTP server for image URLs: `/shapes.png`, `/redirect` (to it), `/loop` (redirects
/// for ever), `/big` (declares 20 MB), `/endless` (chunked, never ends), `/slow` (answers after
/// 5 s), anything else 404.
fn image_host() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let png = std::fs::read(sample("shapes.png")).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let png = png.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap_or(0);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                }
                let _ = match path.as_str() {
                    "/shapes.png" => {
                        write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", png.len())
                            .and_then(|()| stream.write_all(&png))
                    }
                    "/redirect" => write!(stream, "HTTP/1.1 302 Found\r\nLocation: /shapes.png\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                    "/loop" => write!(stream, "HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                    "/big" => write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 20000000\r\nConnection: close\r\n\r\n"),
                    "/endless" => {
                        let chunk = vec![b'x'; 65536];
                        write!(stream, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").and_then(|()| loop {
                            write!(stream, "10000\r\n")?;
                            stream.write_all(&chunk)?;
                            write!(stream, "\r\n")?;
                        })
                    }
                    "/slow" => {
                        std::thread::sleep(Duration::from_secs(5));
                        write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    }
                    _ => write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                };
            });
        }
    });
    port
}

/// The wgpu case (lavapipe in CI): image URLs fetched within their limits, answers equal the
/// CPU command line's; then SIGTERM lets the stream in flight finish and the process exit.
#[test]
fn serve_on_wgpu_fetches_urls_and_stops_gracefully() {
    let expected = expected();
    let host = image_host();
    let server = Server::start_on(
        "gpu",
        &["--max-image-bytes", "1000000", "--image-fetch-timeout", "1"],
    );
    let url = |path: &str| format!("http://127.0.0.1:{host}{path}");
    let ask = |image: &str| json!({"inputs": raw_prompt(QUESTIONS[0].1, &format!("![]({image})")), "parameters": {"max_new_tokens": 12, "details": true}});
    for path in ["/shapes.png", "/redirect"] {
        let (status, body) = server.post("/generate", &ask(&url(path)));
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            body["generated_text"].as_str().unwrap(),
            expected.raw[0].0,
            "{path}"
        );
        assert_eq!(
            ids_of(&body["details"]["tokens"]),
            expected.raw[0].1,
            "{path}"
        );
    }
    for (path, why) in [
        ("/loop", "redirects"),
        ("/big", "larger than the limit of 1000000 bytes"),
        ("/endless", "larger than the limit of 1000000 bytes"),
        ("/slow", "no answer within"),
        ("/missing.png", "HTTP 404"),
    ] {
        let start = Instant::now();
        let (status, body) = server.post("/generate", &ask(&url(path)));
        assert_eq!(status, 422, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(why),
            "{path}: {body}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{path} took {:?}",
            start.elapsed()
        );
    }

    // SIGTERM while a stream is running: it finishes, new connections are refused, the process
    // exits with success.
    let mut server = server;
    let long = json!({"inputs": "User:Hello<end_of_utterance>\nAssistant:", "parameters": {"max_new_tokens": 30, "temperature": 5.0, "seed": 3}}).to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(stream, "POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{long}", long.len()).unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("data:") {
        stream.read_exact(&mut byte).unwrap();
        seen.push(byte[0]);
    }
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    let body = format!("{}{rest}", String::from_utf8_lossy(&seen));
    let events = sse_events(&dechunk(body.split_once("\r\n\r\n").unwrap().1));
    let last = parse(events.last().unwrap());
    assert_eq!(
        last["details"]["generated_tokens"].as_u64().unwrap() as usize,
        events.len(),
        "{body}"
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(("127.0.0.1", server.port)).is_err());
}
