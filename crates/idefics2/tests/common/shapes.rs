//! The shapes task of `assets/idefics2-tiny-shapes` (see `scripts/train-tiny-shapes/shapes.py`),
//! drawn by our own generator: plain light background, 48..640 px sides, 1 to 4 non-overlapping
//! filled circles, squares and triangles in six colours, one-word answers.

use idefics2::processor::DynamicImage;
use idefics2::sampling::Rng;
use image::{Rgb, RgbImage};

pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [255, 0, 0]),
    ("green", [0, 128, 0]),
    ("blue", [0, 0, 255]),
    ("yellow", [255, 255, 0]),
    ("purple", [128, 0, 128]),
    ("orange", [255, 165, 0]),
];
pub const KINDS: [&str; 3] = ["circle", "square", "triangle"];
pub const QUESTION_KINDS: [&str; 4] = ["color", "shape", "count", "color_of_kind"];

pub struct Example {
    pub image: DynamicImage,
    pub question: String,
    pub answer: String,
    pub kind: &'static str,
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

fn between(rng: &mut Rng, lo: u32, hi: u32) -> u32 {
    lo + below(rng, (hi - lo + 1) as usize) as u32
}

/// Non-overlapping boxes `(x, y, side)` with a gap, or `None` when they do not fit.
fn place(rng: &mut Rng, width: u32, height: u32, n: usize) -> Option<Vec<(u32, u32, u32)>> {
    let (short, long) = (width.min(height), width.max(height));
    let s_min = (0.12 * short as f64).ceil() as u32;
    let s_max = s_min.max((0.5 * short as f64).floor() as u32);
    let gap = 2.max((0.03 * long as f64).round() as u32);
    let mut boxes: Vec<(u32, u32, u32)> = Vec::new();
    for _ in 0..n {
        let placed = (0..100).find_map(|_| {
            let s = between(rng, s_min, s_max);
            let (x, y) = (between(rng, 0, width - s), between(rng, 0, height - s));
            let apart = boxes.iter().all(|&(bx, by, bs)| {
                x + s + gap <= bx || bx + bs + gap <= x || y + s + gap <= by || by + bs + gap <= y
            });
            apart.then_some((x, y, s))
        })?;
        boxes.push(placed);
    }
    Some(boxes)
}

fn inside(kind: &str, px: f64, py: f64, x: f64, y: f64, s: f64) -> bool {
    let last = s - 1.0;
    match kind {
        "square" => true,
        "circle" => {
            let r = last / 2.0 + 0.5;
            let (cx, cy) = (x + last / 2.0, y + last / 2.0);
            (px - cx).powi(2) + (py - cy).powi(2) <= r * r
        }
        // Apex up: (x + last/2, y), (x, y + last), (x + last, y + last).
        _ => {
            let t = (py - y) / last.max(1.0);
            let half = t * last / 2.0 + 0.5;
            (px - (x + last / 2.0)).abs() <= half
        }
    }
}

/// One scene with the given shape kinds and colour indices.
fn draw(rng: &mut Rng, kinds: &[&str], colors: &[usize]) -> RgbImage {
    loop {
        let (width, height) = (between(rng, 48, 640), between(rng, 48, 640));
        let background = if below(rng, 2) == 0 {
            [255, 255, 255]
        } else {
            [
                between(rng, 200, 255) as u8,
                between(rng, 200, 255) as u8,
                between(rng, 200, 255) as u8,
            ]
        };
        let Some(boxes) = place(rng, width, height, kinds.len()) else {
            continue;
        };
        let mut image = RgbImage::from_pixel(width, height, Rgb(background));
        for ((kind, &color), &(x, y, s)) in kinds.iter().zip(colors).zip(&boxes) {
            for py in y..y + s {
                for px in x..x + s {
                    if inside(kind, px as f64, py as f64, x as f64, y as f64, s as f64) {
                        image.put_pixel(px, py, Rgb(COLORS[color].1));
                    }
                }
            }
        }
        return image;
    }
}

/// One question of kind `QUESTION_KINDS[kind]` about a freshly drawn image.
pub fn example(rng: &mut Rng, kind: usize) -> Example {
    let qkind = QUESTION_KINDS[kind];
    let mut target = None;
    let kinds: Vec<&str> = match qkind {
        "color" | "shape" => vec![KINDS[below(rng, 3)]],
        "count" => (0..between(rng, 1, 4))
            .map(|_| KINDS[below(rng, 3)])
            .collect(),
        _ => {
            let n = between(rng, 2, 4) as usize;
            let t = below(rng, 3);
            target = Some(KINDS[t]);
            let others: Vec<&str> = KINDS.iter().copied().filter(|k| *k != KINDS[t]).collect();
            let mut kinds = vec![KINDS[t]];
            kinds.extend((1..n).map(|_| others[below(rng, 2)]));
            let at = below(rng, n);
            kinds.swap(0, at);
            kinds
        }
    };
    let colors: Vec<usize> = kinds.iter().map(|_| below(rng, COLORS.len())).collect();
    let image = draw(rng, &kinds, &colors);
    let (question, answer) = match qkind {
        "color" => (
            "What color is the shape?".to_string(),
            COLORS[colors[0]].0.to_string(),
        ),
        "shape" => ("What shape is this?".to_string(), kinds[0].to_string()),
        "count" => (
            "How many shapes are there?".to_string(),
            kinds.len().to_string(),
        ),
        _ => {
            let t = target.unwrap_or("circle");
            let index = kinds.iter().position(|k| *k == t).unwrap_or(0);
            (
                format!("What color is the {t}?"),
                COLORS[colors[index]].0.to_string(),
            )
        }
    };
    Example {
        image: DynamicImage::ImageRgb8(image),
        question,
        answer,
        kind: qkind,
    }
}
