//! Parity of `idefics2::processor` with transformers 4.54.1 + Pillow 13, on the fixtures that
//! `tests/processor/make_processor_fixtures.py` wrote with the reference.
//!
//! Pixels are Pillow-exact: every normalized value equals the reference's, computed from
//! Pillow's resized 8-bit pixel the way transformers rescales and normalizes it in f32 (so our
//! resized bytes are Pillow's bytes). Differences are printed in the `[0, 1]` range of rescaled
//! pixels (a normalized difference `d` is `d / 2` there); shapes and masks must be identical.

use std::path::{Path, PathBuf};

use idefics2::processor::{
    ChatMessage, ChatTemplate, DEFAULT_CHAT_TEMPLATE, Idefics2Processor, ImageOptions,
    ImageProcessor, ImageProcessorConfig, IncrementalDecoder, PixelBatch, ProcessorError,
    PromptProcessor, decode_image_bytes, load_image, load_image_bytes,
};
use image::DynamicImage;
use serde::Deserialize;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/processor")
}

fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
struct PixelFixtures {
    decoded: std::collections::BTreeMap<String, String>,
    cases: Vec<PixelCase>,
}

#[derive(Deserialize)]
struct PixelCase {
    name: String,
    samples: Vec<Vec<String>>,
    loader: String,
    do_image_splitting: bool,
    longest_edge: u32,
    shortest_edge: u32,
    shape: [usize; 5],
    images: Vec<Vec<Option<RefImage>>>,
}

#[derive(Deserialize)]
struct RefImage {
    #[serde(rename = "ref")]
    key: String,
    height: usize,
    width: usize,
}

/// The reference's float for a resized u8 pixel (the generator asserts this equality).
fn reference_value(v: u8) -> f32 {
    ((f64::from(v) * (1.0 / 255.0)) as f32 - 0.5) / 0.5
}

fn load_case_images(case: &PixelCase) -> Vec<Vec<DynamicImage>> {
    let dir = fixture_dir().join("images");
    case.samples
        .iter()
        .map(|sample| {
            sample
                .iter()
                .map(|file| match case.loader.as_str() {
                    "load_image" => load_image(dir.join(file)).expect("load_image"),
                    _ => decode_image_bytes(&std::fs::read(dir.join(file)).expect("read"))
                        .expect("decode"),
                })
                .collect()
        })
        .collect()
}

/// `(max, mean)` absolute difference in `[0, 1]` units over the real pixels, after checking
/// shape, mask and exact zeros everywhere else.
fn compare(case: &PixelCase, batch: &PixelBatch) -> (f64, f64) {
    assert_eq!(batch.shape, case.shape, "{}: shape", case.name);
    let [_, n, _, h, w] = batch.shape;
    let (mut max, mut sum, mut count) = (0f64, 0f64, 0usize);
    for (b, sample) in case.images.iter().enumerate() {
        for (i, slot) in sample.iter().enumerate() {
            let index = b * n + i;
            let values = &batch.pixel_values[index * 3 * h * w..(index + 1) * 3 * h * w];
            let mask = &batch.pixel_attention_mask[index * h * w..(index + 1) * h * w];
            let reference = slot.as_ref().map(|r| {
                let png = image::open(fixture_dir().join("refs").join(format!("{}.png", r.key)))
                    .expect("ref png")
                    .to_rgb8();
                assert_eq!(
                    (png.height() as usize, png.width() as usize),
                    (r.height, r.width)
                );
                (png, r.height, r.width)
            });
            for y in 0..h {
                for x in 0..w {
                    let real = reference
                        .as_ref()
                        .is_some_and(|(_, rh, rw)| y < *rh && x < *rw);
                    assert_eq!(
                        mask[y * w + x],
                        u8::from(real),
                        "{}: mask at [{b},{i},{y},{x}]",
                        case.name
                    );
                    for c in 0..3 {
                        let ours = values[c * h * w + y * w + x];
                        if let (true, Some((png, _, _))) = (real, reference.as_ref()) {
                            let expected = reference_value(png.get_pixel(x as u32, y as u32)[c]);
                            let diff = f64::from((ours - expected).abs()) / 2.0;
                            max = max.max(diff);
                            sum += diff;
                            count += 1;
                        } else {
                            assert_eq!(
                                ours, 0.0,
                                "{}: padding at [{b},{i},{c},{y},{x}]",
                                case.name
                            );
                        }
                    }
                }
            }
        }
    }
    (max, sum / count.max(1) as f64)
}

#[test]
fn pixel_values_match_the_reference() {
    let fixtures: PixelFixtures = read_json("pixels.json");
    assert!(fixtures.cases.len() >= 12 * 4);
    let mut worst = (0f64, 0f64);
    println!(
        "{:<44} {:>18} {:>11} {:>11}",
        "case", "shape", "max*255", "mean*255"
    );
    for case in &fixtures.cases {
        let processor = ImageProcessor::new(ImageProcessorConfig::default());
        let options = ImageOptions {
            do_image_splitting: Some(case.do_image_splitting),
            longest_edge: Some(case.longest_edge),
            shortest_edge: Some(case.shortest_edge),
        };
        let batch = processor
            .preprocess(&load_case_images(case), &options)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let (max, mean) = compare(case, &batch);
        println!(
            "{:<44} {:>18} {:>11.4} {:>11.4}",
            case.name,
            format!("{:?}", &batch.shape[1..]),
            max * 255.0,
            mean * 255.0
        );
        assert!(
            max == 0.0,
            "{}: pixels differ from Pillow's (max |diff| {} / 255, mean {} / 255)",
            case.name,
            max * 255.0,
            mean * 255.0
        );
        worst = (worst.0.max(max), worst.1.max(mean));
    }
    println!(
        "worst: max {:.4}/255, mean {:.4}/255",
        worst.0 * 255.0,
        worst.1 * 255.0
    );
}

#[test]
fn decoders_match_pillow_exactly() {
    // Decoded pixels alone, before any resizing: JPEG variants (progressive, 4:2:0/4:2:2/4:1:1/
    // 4:4:4, gray, CMYK, restart markers, tiny sizes) and lossy WebP.
    let fixtures: PixelFixtures = read_json("pixels.json");
    assert!(fixtures.decoded.len() >= 15);
    for (file, decoded) in &fixtures.decoded {
        let ours = load_image(fixture_dir().join("images").join(file))
            .expect("load")
            .to_rgb8();
        let reference = image::open(fixture_dir().join("decoded").join(decoded))
            .expect("png")
            .to_rgb8();
        assert_eq!(ours.dimensions(), reference.dimensions(), "{file}");
        let diffs: Vec<u8> = ours
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        println!("decode {file:<34} max {max}/255 mean {mean:.4}/255");
        assert_eq!(max, 0, "{file}: decoded pixels differ from Pillow");
    }
}

#[test]
fn damaged_jpegs_are_errors_or_images_never_panics() {
    let dir = fixture_dir().join("images/jpeg");
    for name in [
        "progressive_420.jpg",
        "baseline_422.jpg",
        "restart_blocks.jpg",
        "cmyk.jpg",
    ] {
        let bytes = std::fs::read(dir.join(name)).expect("read");
        for cut in (1..10).map(|i| bytes.len() * i / 10) {
            assert!(
                load_image_bytes(&bytes[..cut]).is_err(),
                "{name} cut at {cut}"
            );
        }
        for step in 1..40 {
            let mut damaged = bytes.clone();
            for i in (step * 7..damaged.len()).step_by(97 + step) {
                damaged[i] ^= 0x55 ^ step as u8;
            }
            let _ = load_image_bytes(&damaged);
        }
    }
}

#[derive(Deserialize)]
struct TextFixtures {
    expansion: Vec<ExpansionCase>,
    chat: Vec<ChatCase>,
    chat_batch: Vec<ChatBatch>,
    decode: Vec<DecodeCase>,
    errors: Vec<ErrorCase>,
}

#[derive(Deserialize)]
struct ExpansionCase {
    name: String,
    prompts: Vec<String>,
    image_seq_len: usize,
    do_image_splitting: bool,
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct ChatCase {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: String,
}

#[derive(Deserialize)]
struct ChatBatch {
    conversations: Vec<String>,
    image_seq_len: usize,
    do_image_splitting: bool,
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    skip_special_tokens_false: String,
    skip_special_tokens_true: String,
}

#[derive(Deserialize)]
struct ErrorCase {
    prompts: Vec<String>,
    n_images: Vec<usize>,
}

#[test]
fn prompt_expansion_and_tokens_match_the_reference() {
    let fixtures: TextFixtures = read_json("text.json");
    for case in &fixtures.expansion {
        let prompt = PromptProcessor::bundled(case.image_seq_len).expect("tokenizer");
        let batch = prompt
            .encode(&case.prompts, case.do_image_splitting)
            .expect("encode");
        assert_eq!(batch.input_ids, case.input_ids, "{}", case.name);
        assert_eq!(batch.attention_mask, case.attention_mask, "{}", case.name);
    }
    println!("{} expansion cases match", fixtures.expansion.len());
}

#[test]
fn process_checks_counts_and_matches_the_reference() {
    let fixtures: TextFixtures = read_json("text.json");
    let case = fixtures
        .expansion
        .iter()
        .find(|c| c.name == "batch/seq=64/split=True")
        .expect("batch case");
    let image = load_image(fixture_dir().join("images/odd_377x251.png")).expect("image");
    let images: Vec<Vec<DynamicImage>> = case
        .prompts
        .iter()
        .map(|p| vec![image.clone(); PromptProcessor::count_image_tokens(p)])
        .collect();
    let processor =
        Idefics2Processor::from_model_dir(fixture_dir().join("model_dir")).expect("processor");
    let out = processor
        .process(&case.prompts, &images, &ImageOptions::default())
        .expect("process");
    assert_eq!(out.input_ids, case.input_ids);
    assert_eq!(out.attention_mask, case.attention_mask);
    let pixels = out.pixels.expect("pixels");
    assert_eq!(pixels.shape, [2, 10, 3, 378, 378]);

    for error in &fixtures.errors {
        let images: Vec<Vec<DynamicImage>> = error
            .n_images
            .iter()
            .map(|&n| vec![image.clone(); n])
            .collect();
        let result = processor.process(&error.prompts, &images, &ImageOptions::default());
        assert!(
            matches!(
                result,
                Err(ProcessorError::ImageTokenCount {
                    sample: 0,
                    tokens: 2,
                    images: 1
                })
            ),
            "{result:?}"
        );
    }
    let result = processor.process(&["<image>"], &[], &ImageOptions::default());
    assert!(matches!(
        result,
        Err(ProcessorError::ImageTokenCount {
            tokens: 1,
            images: 0,
            ..
        })
    ));
    let result = processor.process(&["a", "b"], &[vec![]], &ImageOptions::default());
    assert!(matches!(
        result,
        Err(ProcessorError::BatchSize {
            prompts: 2,
            samples: 1
        })
    ));
    let text_only = processor
        .process(&["just text"], &[], &ImageOptions::default())
        .expect("text only");
    assert!(text_only.pixels.is_none());
}

#[test]
fn chat_template_matches_the_reference() {
    let fixtures: TextFixtures = read_json("text.json");
    let template = ChatTemplate::from_model_dir(fixture_dir().join("model_dir"))
        .expect("read")
        .expect("template");
    assert_eq!(template.source(), DEFAULT_CHAT_TEMPLATE);
    for case in &fixtures.chat {
        let text = template
            .render(&case.messages, case.add_generation_prompt)
            .expect("render");
        assert_eq!(text, case.text, "{}", case.name);
    }
    let image = load_image(fixture_dir().join("images/tiny_5x4.png")).expect("image");
    for batch in &fixtures.chat_batch {
        let mut processor =
            Idefics2Processor::from_model_dir(fixture_dir().join("model_dir")).expect("processor");
        processor.prompt = PromptProcessor::bundled(batch.image_seq_len).expect("tokenizer");
        let chats: Vec<Vec<ChatMessage>> = batch
            .conversations
            .iter()
            .map(|name| {
                let case_name = format!("{name}/agp=True");
                let case = fixtures.chat.iter().find(|c| c.name == case_name);
                case.expect("chat case").messages.clone()
            })
            .collect();
        let images: Vec<Vec<DynamicImage>> = chats
            .iter()
            .map(|chat| vec![image.clone(); chat.iter().map(ChatMessage::image_count).sum()])
            .collect();
        let options = ImageOptions {
            do_image_splitting: Some(batch.do_image_splitting),
            ..Default::default()
        };
        let out = processor
            .process_chats(&chats, &images, &options)
            .expect("process");
        let label = format!(
            "seq={} split={}",
            batch.image_seq_len, batch.do_image_splitting
        );
        assert_eq!(out.input_ids, batch.input_ids, "{label}");
        assert_eq!(out.attention_mask, batch.attention_mask, "{label}");
        let per_image = if batch.do_image_splitting { 5 } else { 1 };
        assert_eq!(
            out.pixels.expect("pixels").shape,
            [2, 2 * per_image, 3, 378, 378]
        );
    }
    println!(
        "{} chat renders, {} chat batches match",
        fixtures.chat.len(),
        fixtures.chat_batch.len()
    );
}

#[test]
fn decode_and_streaming_match_the_reference() {
    let fixtures: TextFixtures = read_json("text.json");
    let prompt = PromptProcessor::bundled(64).expect("tokenizer");
    for case in &fixtures.decode {
        assert_eq!(
            prompt.decode(&case.ids, false).expect("decode"),
            case.skip_special_tokens_false
        );
        assert_eq!(
            prompt.decode(&case.ids, true).expect("decode"),
            case.skip_special_tokens_true
        );
        for (skip, expected) in [
            (false, &case.skip_special_tokens_false),
            (true, &case.skip_special_tokens_true),
        ] {
            let mut decoder = IncrementalDecoder::new(skip);
            let mut streamed = String::new();
            for &id in &case.ids {
                streamed.extend(decoder.step(&prompt, id).expect("step"));
            }
            streamed.extend(decoder.finish(&prompt).expect("finish"));
            assert_eq!(&streamed, expected);
        }
    }
}

#[test]
fn model_dir_config_is_read() {
    let processor =
        Idefics2Processor::from_model_dir(fixture_dir().join("model_dir")).expect("processor");
    let config = processor.image_processor.config();
    assert!(config.do_image_splitting);
    assert_eq!(
        (config.size.longest_edge, config.size.shortest_edge),
        (980, 378)
    );
    assert_eq!(processor.prompt.image_seq_len(), 64);
    // A directory with nothing in it falls back to every default.
    let empty = Idefics2Processor::from_model_dir(fixture_dir().join("images")).expect("defaults");
    assert!(!empty.image_processor.config().do_image_splitting);
    assert_eq!(empty.chat_template.source(), DEFAULT_CHAT_TEMPLATE);
}

#[test]
fn unreadable_images_are_errors() {
    let bad = fixture_dir().join("bad");
    for file in ["corrupt.png", "truncated.png", "not_an_image.txt"] {
        let result = load_image(bad.join(file));
        assert!(
            matches!(result, Err(ProcessorError::DecodeImage { .. })),
            "{file}: {result:?}"
        );
        println!(
            "{file}: {}",
            result.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    let missing = load_image(bad.join("missing.png"));
    assert!(
        matches!(missing, Err(ProcessorError::ReadFile { .. })),
        "{missing:?}"
    );
    let processor = ImageProcessor::default();
    let paths = vec![vec![bad.join("truncated.png")]];
    assert!(
        processor
            .preprocess_paths(&paths, &ImageOptions::default())
            .is_err()
    );
    assert!(matches!(
        processor.preprocess(&[], &ImageOptions::default()),
        Err(ProcessorError::EmptyBatch)
    ));
}
