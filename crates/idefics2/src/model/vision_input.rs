//! Host-side preparation of the vision encoder's input, exactly as `Idefics2Model` and
//! `Idefics2VisionEmbeddings` (transformers 4.54.1) do it: drop all-zero padding images, derive
//! the patch mask (a patch is real only if all its pixels are), bucket position ids, and cut the
//! pixels into patch vectors (the conv patch embedding becomes one matmul).

use crate::error::{Error, Result};
use crate::pixels::PixelBatch;

/// # Shapes
/// - `patches`: `[images, patches_h * patches_w, channels * patch * patch]`
/// - `position_ids`: `[images, patches_h * patches_w]`
/// - `patch_mask`: `[images, patches_h * patches_w]`
#[derive(Debug, Clone)]
pub struct VisionInput {
    pub images: usize,
    pub patches_h: usize,
    pub patches_w: usize,
    pub patch_dim: usize,
    pub patches: Vec<f32>,
    pub position_ids: Vec<i64>,
    pub patch_mask: Vec<bool>,
}

impl VisionInput {
    pub fn num_patches(&self) -> usize {
        self.patches_h * self.patches_w
    }
}

/// Builds the encoder input; `None` when every image is padding.
pub fn prepare(
    pixels: &PixelBatch,
    patch_size: usize,
    num_patches_per_side: usize,
) -> Result<Option<VisionInput>> {
    let [batch, max_images, channels, height, width] = pixels.shape;
    let expected_values = batch * max_images * channels * height * width;
    if pixels.pixel_values.len() != expected_values
        || pixels.pixel_attention_mask.len() != batch * max_images * height * width
    {
        return Err(Error::InputShape {
            what: "pixel_values / pixel_attention_mask".into(),
            expected: pixels.shape.to_vec(),
            got: vec![pixels.pixel_values.len(), pixels.pixel_attention_mask.len()],
        });
    }
    let real: Vec<usize> = (0..batch * max_images)
        .filter(|&i| pixels.image(i).iter().any(|&v| v != 0.0))
        .collect();
    if real.is_empty() {
        return Ok(None);
    }
    let (patches_h, patches_w) = (height / patch_size, width / patch_size);
    let num_patches = patches_h * patches_w;
    let patch_dim = channels * patch_size * patch_size;
    let mut input = VisionInput {
        images: real.len(),
        patches_h,
        patches_w,
        patch_dim,
        patches: Vec::with_capacity(real.len() * num_patches * patch_dim),
        position_ids: Vec::with_capacity(real.len() * num_patches),
        patch_mask: Vec::with_capacity(real.len() * num_patches),
    };
    let boundaries = arange_f32(
        1.0 / num_patches_per_side as f64,
        1.0,
        1.0 / num_patches_per_side as f64,
    );
    for &index in &real {
        let image = pixels.image(index);
        let mask = pixels.mask(index);
        let patch_mask: Vec<bool> = (0..num_patches)
            .map(|p| {
                let (py, px) = (p / patches_w, p % patches_w);
                (0..patch_size).all(|dy| {
                    let row = (py * patch_size + dy) * width + px * patch_size;
                    mask[row..row + patch_size].iter().all(|&m| m != 0)
                })
            })
            .collect();
        let nb_h = (0..patches_h)
            .filter(|&py| patch_mask[py * patches_w])
            .count();
        let nb_w = (0..patches_w).filter(|&px| patch_mask[px]).count();
        let real_count = patch_mask.iter().filter(|&&m| m).count();
        if real_count != nb_h * nb_w {
            return Err(Error::InputShape {
                what: format!(
                    "pixel_attention_mask of image {index}: real patches must form a top-left rectangle"
                ),
                expected: vec![nb_h, nb_w],
                got: vec![real_count],
            });
        }
        let bucket_h = bucket_coords(nb_h, &boundaries);
        let bucket_w = bucket_coords(nb_w, &boundaries);
        let mut ids = bucket_h.iter().flat_map(|&h| {
            bucket_w
                .iter()
                .map(move |&w| h * num_patches_per_side as i64 + w)
        });
        for &is_real in &patch_mask {
            input
                .position_ids
                .push(if is_real { ids.next().unwrap_or(0) } else { 0 });
        }
        input.patch_mask.extend_from_slice(&patch_mask);
        for p in 0..num_patches {
            let (py, px) = (p / patches_w, p % patches_w);
            for c in 0..channels {
                for dy in 0..patch_size {
                    let start = (c * height + py * patch_size + dy) * width + px * patch_size;
                    input
                        .patches
                        .extend_from_slice(&image[start..start + patch_size]);
                }
            }
        }
    }
    Ok(Some(input))
}

/// `torch.arange(start, end, step)` in f32 as ATen's CPU kernel computes it (the reference the
/// model's position buckets come from): the length in f64; elements in blocks of two 8-lane
/// vectors, each vector's base rounded to f32 and its lanes `f32(base + k*step)`; the tail
/// (`len % 16`) elementwise as `f32(start + step*i)`. Checked against `position_buckets.json`.
fn arange_f32(start: f64, end: f64, step: f64) -> Vec<f32> {
    let len = ((end - start) / step).ceil().max(0.0) as usize;
    let vectorized = len / 16 * 16;
    (0..len)
        .map(|i| {
            if i < vectorized {
                let (j, k) = (i / 8 * 8, i % 8);
                let base = (start + step * j as f64) as f32;
                (base as f64 + k as f64 * step) as f32
            } else {
                (start + step * i as f64) as f32
            }
        })
        .collect()
}

/// `bucketize(arange(0, 1 - 1e-6, 1 / nb), boundaries, right=True)` where `1 / nb` is an f32
/// tensor: the index of the first boundary greater than each coordinate.
fn bucket_coords(nb: usize, boundaries: &[f32]) -> Vec<i64> {
    if nb == 0 {
        return Vec::new();
    }
    let step = (1.0f32 / nb as f32) as f64;
    arange_f32(0.0, 1.0 - 1e-6, step)
        .into_iter()
        .map(|x| boundaries.iter().take_while(|&&b| b <= x).count() as i64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bucket ids recorded from transformers 4.54.1 by `tests/fixtures/make_fixtures.py`.
    #[test]
    fn position_buckets_match_the_reference() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/position_buckets.json"
        );
        let text = std::fs::read_to_string(path).expect("fixture position_buckets.json");
        let table: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, Vec<i64>>,
        > = serde_json::from_str(&text).expect("valid JSON");
        let mut checked = 0;
        for (side, rows) in &table {
            let side: usize = side.parse().expect("side");
            let boundaries = arange_f32(1.0 / side as f64, 1.0, 1.0 / side as f64);
            for (nb, expected) in rows {
                let nb: usize = nb.parse().expect("nb");
                assert_eq!(
                    &bucket_coords(nb, &boundaries),
                    expected,
                    "side {side}, nb {nb}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 100, "only {checked} rows checked");
    }

    #[test]
    fn padding_images_are_dropped_and_partial_patches_masked() {
        // batch 1, 2 images, 1 channel, 4x4 pixels, patch 2: image 0 real on 3x4 pixels, image 1 zero.
        let mut pixel_values = vec![0.0; 2 * 16];
        let mut pixel_attention_mask = vec![0u8; 2 * 16];
        for i in 0..12 {
            pixel_values[i] = 0.5;
            pixel_attention_mask[i] = 1;
        }
        let batch = PixelBatch {
            pixel_values,
            pixel_attention_mask,
            shape: [1, 2, 1, 4, 4],
            image_sizes: Vec::new(),
        };
        let input = prepare(&batch, 2, 2).unwrap().unwrap();
        assert_eq!(input.images, 1);
        assert_eq!(input.patch_mask, vec![true, true, false, false]);
        assert_eq!(input.position_ids, vec![0, 1, 0, 0]);
    }
}
