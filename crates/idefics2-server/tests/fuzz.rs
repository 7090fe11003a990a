//! A mutation fuzzer in stable Rust for what `idefics2 serve` reads from the network: image bytes
//! (through the server's own path: the declared-size check, then our JPEG port or the PNG, WebP,
//! GIF and BMP decoders) and request bodies (TGI's and OpenAI's JSON, their parameters, markdown
//! images, chat parts).
//!
//! Each target mutates a seed corpus of real files (`tests/processor/images`, the request bodies
//! below) with bit flips, interesting values at size fields, insertions, deletions, duplications
//! and splices. Every input must return (an answer or an error) without a panic, within
//! `HANG_SECONDS`, and allocating less than the pixel limit allows. A failing input is written to
//! `target/fuzz-failures/` and the run fails; each one found becomes a regression test in
//! `crashes()` below.
//!
//! `cargo test --release -p idefics2-server --test fuzz` runs every target for a bounded number
//! of inputs (CI); `-- --seconds 600` runs each for that long instead, `-- --target jpeg` only
//! one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use idefics2::sampling::Rng;
use idefics2_server::ServerLimits;
use idefics2_server::errors::parse_json;
use idefics2_server::images::{decode, split_markdown_images};
use idefics2_server::openai::{ChatRequest, CompletionRequest, chat_messages};
use idefics2_server::tgi::GenerateRequest;

/// Counts live bytes and the peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout goes to the system allocator as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const HANG_SECONDS: u64 = 10;
/// The pixel limit the image targets run with.
const PIXELS: u64 = 4_000_000;
/// What one image may allocate: the decoded image in its widest form (16-bit RGBA), its RGB8
/// copy, and 16 MB for the decoder's own tables and buffers.
const IMAGE_BYTES_BOUND: usize = (PIXELS as usize) * (8 + 3) + (16 << 20);
/// A request body may take a few copies of itself in parsed form.
const REQUEST_BYTES_BOUND: usize = 64 << 20;

/// A uniform index below `n` (the library's seeded generator: runs repeat by `--seed`).
fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

const INTERESTING: [u32; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x10000,
    0x7fff_ffff,
    0xffff_ffff,
];

/// One to four mutations of `seed`, sometimes spliced with `other`.
fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + below(rng, 4) {
        let len = data.len();
        match below(rng, 8) {
            0 if len > 0 => {
                let i = below(rng, len);
                data[i] ^= 1 << below(rng, 8);
            }
            1 if len > 0 => {
                let i = below(rng, len);
                data[i] = INTERESTING[below(rng, 5)] as u8;
            }
            2 if len > 4 => {
                // A 16- or 32-bit field (big or little endian) set to an interesting value.
                let value = INTERESTING[below(rng, INTERESTING.len())];
                let width = if below(rng, 2) == 0 { 2 } else { 4 };
                let i = below(rng, len - width);
                let bytes = if below(rng, 2) == 0 {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                let bytes = if width == 2 { &bytes[2..] } else { &bytes[..] };
                data[i..i + width].copy_from_slice(&bytes[..width]);
            }
            3 => {
                let i = below(rng, len + 1);
                let n = 1 + below(rng, 16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                data.splice(i..i, bytes);
            }
            4 if len > 1 => {
                let i = below(rng, len);
                let n = 1 + below(rng, (len - i).min(256));
                data.drain(i..i + n);
            }
            5 if len > 1 => {
                let i = below(rng, len);
                let n = 1 + below(rng, (len - i).min(256));
                let copy = data[i..i + n].to_vec();
                let at = below(rng, len);
                data.splice(at..at, copy);
            }
            6 if !other.is_empty() && len > 0 => {
                let cut = below(rng, len);
                let from = below(rng, other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                // Truncation: a file cut off in the middle.
                data.truncate(below(rng, len));
            }
            _ => data.push(rng.next_u64() as u8),
        }
    }
    data
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Jpeg,
    Png,
    Webp,
    Gif,
    Bmp,
    Request,
}

impl Target {
    const ALL: [Target; 6] = [
        Target::Jpeg,
        Target::Png,
        Target::Webp,
        Target::Gif,
        Target::Bmp,
        Target::Request,
    ];

    fn name(self) -> &'static str {
        match self {
            Target::Jpeg => "jpeg",
            Target::Png => "png",
            Target::Webp => "webp",
            Target::Gif => "gif",
            Target::Bmp => "bmp",
            Target::Request => "request",
        }
    }

    fn bound(self) -> usize {
        match self {
            Target::Request => REQUEST_BYTES_BOUND,
            _ => IMAGE_BYTES_BOUND,
        }
    }

    fn seeds(self) -> Vec<Vec<u8>> {
        if self == Target::Request {
            return REQUESTS.iter().map(|r| r.as_bytes().to_vec()).collect();
        }
        let extension = match self {
            Target::Jpeg => "jpg",
            Target::Png => "png",
            Target::Webp => "webp",
            Target::Gif => "gif",
            _ => "bmp",
        };
        let root = repo().join("tests/processor/images");
        let mut files = Vec::new();
        for dir in [root.clone(), root.join("jpeg")] {
            for entry in std::fs::read_dir(&dir).expect("the seed corpus").flatten() {
                let path = entry.path();
                let small = entry.metadata().is_ok_and(|m| m.len() < 64 << 10);
                if small && path.extension().is_some_and(|e| e == extension) {
                    files.push(std::fs::read(&path).expect("a seed file"));
                }
            }
        }
        assert!(!files.is_empty(), "no {extension} seeds");
        files.extend(regressions(self));
        files
    }
}

/// Request bodies as the clients send them.
const REQUESTS: [&str; 6] = [
    r#"{"inputs":"User:![](data:image/png;base64,iVBORw0KGgo=)What color is the shape?<end_of_utterance>\nAssistant:","parameters":{"best_of":null,"decoder_input_details":false,"details":true,"do_sample":false,"frequency_penalty":null,"grammar":null,"max_new_tokens":20,"repetition_penalty":null,"return_full_text":false,"seed":null,"stop":[],"temperature":null,"top_k":null,"top_n_tokens":null,"top_p":null,"truncate":null,"typical_p":null,"watermark":false,"adapter_id":null},"stream":false}"#,
    r#"{"inputs":"Hi ![](https://example.com/a.png) and ![](data:image/jpeg;base64,/9j/4AAQ)","parameters":{"max_new_tokens":5,"temperature":0.7,"top_k":10,"top_p":0.9,"seed":3,"stop":["\n","."]},"stream":true}"#,
    r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"high"}},{"type":"text","text":"What is it?"}]},{"role":"assistant","content":"A cat."}],"max_tokens":12,"temperature":0,"top_p":1,"seed":1,"stop":"END","n":1,"logprobs":true,"top_logprobs":2,"stream":true,"stream_options":{"include_usage":true}}"#,
    r#"{"model":"m","messages":[{"role":"user","content":"Hello"}],"max_completion_tokens":3,"stop":["a","b"],"frequency_penalty":0,"presence_penalty":0}"#,
    r#"{"model":"m","prompt":"User:![](http://127.0.0.1/x.png)Hi","max_tokens":7,"logprobs":2,"echo":true,"stream":false,"temperature":1.5}"#,
    r#"{"model":"m","prompt":["one"],"max_tokens":1,"stop":null}"#,
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The work the server does with `data` before the engine sees it.
fn run_one(target: Target, data: &[u8]) {
    match target {
        Target::Request => {
            let body = || Ok(Bytes::copy_from_slice(data));
            if let Ok(request) = parse_json::<GenerateRequest>(body()) {
                let _ = request.parameters.to_params();
                let _ = split_markdown_images(&request.inputs);
            }
            if let Ok(request) = parse_json::<ChatRequest>(body()) {
                let _ = request
                    .sampler
                    .to_params(0, request.top_logprobs.unwrap_or(0));
                let _ = chat_messages(request.messages);
            }
            if let Ok(request) = parse_json::<CompletionRequest>(body()) {
                let _ = request.sampler.to_params(16, request.logprobs.unwrap_or(0));
            }
        }
        _ => {
            let limits = ServerLimits {
                image_pixels: PIXELS,
                ..ServerLimits::default()
            };
            let _ = decode(data, &limits, 0);
        }
    }
}

enum Outcome {
    Ok { peak: usize },
    Panicked(String),
}

/// Runs `inputs` on a worker thread (so that a hang can be seen); the first failure, if any.
fn fuzz(target: Target, budget: Budget, seed: u64) -> Result<usize, String> {
    let seeds = target.seeds();
    let (inputs_tx, inputs_rx) = mpsc::sync_channel::<Vec<u8>>(1);
    let (done_tx, done_rx) = mpsc::channel::<Outcome>();
    std::thread::spawn(move || {
        while let Ok(data) = inputs_rx.recv() {
            let base = LIVE.load(Ordering::Relaxed);
            PEAK.store(base, Ordering::Relaxed);
            let outcome = match std::panic::catch_unwind(|| run_one(target, &data)) {
                Ok(()) => Outcome::Ok {
                    peak: PEAK.load(Ordering::Relaxed).saturating_sub(base),
                },
                Err(panic) => Outcome::Panicked(idefics2::panic_text(&*panic)),
            };
            if done_tx.send(outcome).is_err() {
                return;
            }
        }
    });
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut count = 0;
    let mut worst = 0;
    while budget.more(count, start) {
        let data = if count < seeds.len() {
            seeds[count].clone()
        } else {
            let a = &seeds[below(&mut rng, seeds.len())];
            let b = &seeds[below(&mut rng, seeds.len())];
            mutate(a, b, &mut rng)
        };
        inputs_tx
            .send(data.clone())
            .map_err(|_| "the worker died".to_string())?;
        let failure = match done_rx.recv_timeout(Duration::from_secs(HANG_SECONDS)) {
            Ok(Outcome::Ok { peak }) if peak <= target.bound() => {
                worst = worst.max(peak);
                None
            }
            Ok(Outcome::Ok { peak }) => Some(format!(
                "allocated {peak} bytes, over the bound of {}",
                target.bound()
            )),
            Ok(Outcome::Panicked(message)) => Some(format!("panicked: {message}")),
            Err(_) => Some(format!("no answer within {HANG_SECONDS} s")),
        };
        if let Some(why) = failure {
            let dir = repo().join("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{}-{count}", target.name()));
            let _ = std::fs::write(&path, &data);
            return Err(format!(
                "{}: input {count} {why}; saved to {}",
                target.name(),
                path.display()
            ));
        }
        count += 1;
    }
    println!(
        "fuzz {:8} {count:7} inputs in {:6.1} s, no failure; largest allocation peak {:.1} MB",
        target.name(),
        start.elapsed().as_secs_f64(),
        worst as f64 / 1e6
    );
    Ok(count)
}

#[derive(Clone, Copy)]
enum Budget {
    Inputs(usize),
    Seconds(f64),
}

impl Budget {
    fn more(self, count: usize, start: Instant) -> bool {
        match self {
            Budget::Inputs(n) => count < n,
            Budget::Seconds(s) => start.elapsed().as_secs_f64() < s,
        }
    }
}

/// Inputs that failed once (`tests/server/fuzz-regressions/<target>-*.bin`), run first with
/// every check, as regression tests. Found so far:
/// - `gif-frame-larger-than-screen`: a 180x130 logical screen (what the pixel check reads) with a
///   65460x255 frame; the decoder allocated 84 MB. Now the decoder's allocations are capped too.
fn regressions(target: Target) -> Vec<Vec<u8>> {
    let dir = repo().join("tests/server/fuzz-regressions");
    let prefix = format!("{}-", target.name());
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("the regression inputs")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            inputs.push(std::fs::read(entry.path()).expect("a regression input"));
        }
    }
    inputs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // `cargo test` passes its own flags (--nocapture, filters): only ours are read.
    let budget = match value("--seconds").and_then(|s| s.parse().ok()) {
        Some(seconds) => Budget::Seconds(seconds),
        None => Budget::Inputs(
            value("--inputs")
                .and_then(|s| s.parse().ok())
                .unwrap_or(20_000),
        ),
    };
    let only = value("--target");
    let seed = value("--seed").and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut failures = Vec::new();
    for target in Target::ALL {
        if only.as_deref().is_some_and(|t| t != target.name()) {
            continue;
        }
        if let Err(failure) = fuzz(target, budget, seed) {
            failures.push(failure);
        }
    }
    if !failures.is_empty() {
        eprintln!("{}", failures.join("\n"));
        std::process::exit(1);
    }
}
