//! Pillow's convolution resampling (`Image.resize`), exact in its 8-bit mode.
//!
//! Port of `src/libImaging/Resample.c` (Pillow 13.0): separable filters whose support grows with
//! the downscale factor (antialiasing), coefficients normalized to sum 1 and then quantized to
//! 22-bit fixed point; two passes, each rounded and clipped to `u8`. A side whose size does not
//! change is not resampled. Same inputs give the same bytes as Pillow 13.
//!
//! Pass order matters to the last bit. Pillow 13 runs the vertical pass first when the height
//! shrinks by more than twice as many pixels as the width does; Pillow 12 and older always run
//! the horizontal pass first (over only the rows the vertical pass reads). Results of the two
//! orders differ by at most 1/255 on a few pixels.

use serde::{Deserialize, Serialize};

/// PIL's resampling filter ids, as stored in `preprocessor_config.json` (`"resample": 2`).
/// `NEAREST` (0) uses a different code path in Pillow and is not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum Resample {
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl TryFrom<u32> for Resample {
    type Error = String;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(Self::Lanczos),
            2 => Ok(Self::Bilinear),
            3 => Ok(Self::Bicubic),
            4 => Ok(Self::Box),
            5 => Ok(Self::Hamming),
            other => Err(format!(
                "unsupported PIL resample filter {other} (supported: 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING)"
            )),
        }
    }
}

impl From<Resample> for u32 {
    fn from(value: Resample) -> Self {
        match value {
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
            Resample::Box => 4,
            Resample::Hamming => 5,
        }
    }
}

impl Resample {
    /// Filter radius at scale 1.
    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // The C source mixes float literals into double math.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Fixed-point bits of the 8-bit path: 32 - 8 (value) - 2 (overflow headroom).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: the first input index, how many inputs it reads, and their weights.
struct Coefficients {
    ksize: usize,
    /// `(first input index, input count)` per output index.
    bounds: Vec<(usize, usize)>,
    /// `[out_size, ksize]`, fixed point with `PRECISION_BITS` fractional bits.
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `in0..in1` of an axis of `in_size`.
fn precompute_coefficients(
    in_size: usize,
    in0: f32,
    in1: f32,
    out_size: usize,
    filter: Resample,
) -> Coefficients {
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        // `(int)` casts in C truncate toward zero; Rust's `as` does the same.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let count = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(count) {
            let w = filter.weight(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(count) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin as usize, count));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A packed RGB8 image or a rectangle of one (rows `stride` bytes apart), borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RgbRegion<'a> {
    pub data: &'a [u8],
    pub stride: usize,
    pub width: usize,
    pub height: usize,
}

impl<'a> RgbRegion<'a> {
    /// The whole of a packed `width x height` RGB8 buffer.
    pub fn whole(data: &'a [u8], width: usize, height: usize) -> Self {
        Self {
            data,
            stride: width * 3,
            width,
            height,
        }
    }

    /// The `width x height` rectangle at column `x0`, row `y0`.
    pub fn crop(&self, x0: usize, y0: usize, width: usize, height: usize) -> Self {
        let start = (y0 * self.stride + x0 * 3).min(self.data.len());
        Self {
            data: &self.data[start..],
            stride: self.stride,
            width,
            height,
        }
    }

    fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width * 3]
    }

    /// The region as a packed buffer.
    pub fn to_vec(self) -> Vec<u8> {
        (0..self.height)
            .flat_map(|y| self.row(y).iter().copied())
            .collect()
    }
}

/// Resizes packed RGB8 `image` (`height x width x 3`) to `out_width x out_height` like Pillow's
/// `Image.resize((out_width, out_height), filter)` on an RGB image.
pub fn resize_rgb8(
    image: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
    filter: Resample,
) -> Vec<u8> {
    resize_region(
        RgbRegion::whole(image, width, height),
        out_width,
        out_height,
        filter,
    )
}

/// `ImagingResampleInner` (Pillow 13) with box `(0, 0, width, height)`. Returns packed RGB8
/// `[out_height, out_width, 3]`.
pub(crate) fn resize_region(
    src: RgbRegion<'_>,
    out_width: usize,
    out_height: usize,
    filter: Resample,
) -> Vec<u8> {
    let need_horizontal = out_width != src.width;
    let need_vertical = out_height != src.height;
    if !need_horizontal && !need_vertical {
        return src.to_vec();
    }
    let vert = precompute_coefficients(src.height, 0.0, src.height as f32, out_height, filter);
    let height_cut = src.height as i64 - out_height as i64;
    let width_cut = src.width as i64 - out_width as i64;
    if height_cut > 0 && height_cut > width_cut * 2 {
        let columns = resample_vertical(&src, 0, &vert, out_height); // [out_height, width, 3]
        if !need_horizontal {
            return columns;
        }
        let columns = RgbRegion::whole(&columns, src.width, out_height);
        return resample_horizontal(&columns, 0, out_height, out_width, filter);
    }
    // Rows of the source the vertical pass reads.
    let ybox_first = vert.bounds.first().map_or(0, |b| b.0);
    let ybox_last = vert.bounds.last().map_or(0, |b| b.0 + b.1);

    let horizontal;
    let (rows, row_offset) = if need_horizontal {
        let temp_height = ybox_last - ybox_first;
        horizontal = resample_horizontal(&src, ybox_first, temp_height, out_width, filter);
        (
            RgbRegion::whole(&horizontal, out_width, temp_height),
            ybox_first,
        )
    } else {
        (src, 0)
    };
    if !need_vertical {
        return rows.to_vec();
    }
    resample_vertical(&rows, row_offset, &vert, out_height)
}

/// Horizontal pass over source rows `first_row..first_row + n_rows`: `[n_rows, out_width, 3]`.
fn resample_horizontal(
    src: &RgbRegion<'_>,
    first_row: usize,
    n_rows: usize,
    out_width: usize,
    filter: Resample,
) -> Vec<u8> {
    let coeffs = precompute_coefficients(src.width, 0.0, src.width as f32, out_width, filter);
    let mut out = vec![0u8; n_rows * out_width * 3];
    for (yy, line_out) in out.chunks_exact_mut(out_width * 3).enumerate() {
        let line_in = src.row(first_row + yy);
        for (xx, pixel) in line_out.chunks_exact_mut(3).enumerate() {
            let (xmin, count) = coeffs.bounds[xx];
            let k = &coeffs.weights[xx * coeffs.ksize..xx * coeffs.ksize + count];
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &w) in k.iter().enumerate() {
                let p = &line_in[(xmin + x) * 3..(xmin + x) * 3 + 3];
                for c in 0..3 {
                    acc[c] = acc[c].wrapping_add(i32::from(p[c]).wrapping_mul(w));
                }
            }
            for c in 0..3 {
                pixel[c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Vertical pass; `vert.bounds` index rows of the original source, `rows` starts at
/// source row `row_offset`. Returns `[out_height, rows.width, 3]`.
fn resample_vertical(
    rows: &RgbRegion<'_>,
    row_offset: usize,
    vert: &Coefficients,
    out_height: usize,
) -> Vec<u8> {
    let width = rows.width;
    let mut out = vec![0u8; out_height * width * 3];
    let mut acc = vec![0i32; width * 3];
    for (yy, line_out) in out.chunks_exact_mut(width * 3).enumerate() {
        let (ymin, count) = vert.bounds[yy];
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + count];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (y, &w) in k.iter().enumerate() {
            let line_in = rows.row(ymin - row_offset + y);
            for (a, &p) in acc.iter_mut().zip(line_in) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(w));
            }
        }
        for (o, &a) in line_out.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_a_copy() {
        let img: Vec<u8> = (0..2 * 3 * 3).map(|v| v as u8 * 7).collect();
        assert_eq!(resize_rgb8(&img, 3, 2, 3, 2, Resample::Bilinear), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = vec![77u8; 17 * 9 * 3];
        for (w, h) in [(5, 4), (40, 33), (17, 2), (3, 9)] {
            let out = resize_rgb8(&img, 17, 9, w, h, Resample::Bilinear);
            assert_eq!(out.len(), w * h * 3);
            assert!(out.iter().all(|&v| v == 77), "{w}x{h}");
        }
    }

    #[test]
    fn bilinear_weights_sum_to_one_in_fixed_point() {
        let c = precompute_coefficients(2000, 0.0, 2000.0, 980, Resample::Bilinear);
        for (xx, &(_, count)) in c.bounds.iter().enumerate() {
            let sum: i32 = c.weights[xx * c.ksize..xx * c.ksize + count].iter().sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= count as i32,
                "{xx}: {sum}"
            );
        }
    }

    #[test]
    fn two_to_one_downscale_averages_pairs() {
        // Bilinear at scale 2 has support 2: weights 1/8, 3/8, 3/8, 1/8 around each pair.
        let img: Vec<u8> = [0u8, 0, 0, 100, 100, 100, 200, 200, 200, 100, 100, 100].to_vec();
        let out = resize_rgb8(&img, 4, 1, 2, 1, Resample::Bilinear);
        // (0*3 + 100*3 + 200*1)/7 and (100*1 + 200*3 + 100*3)/7, edge weights renormalized.
        assert_eq!(out, vec![71, 71, 71, 143, 143, 143]);
    }
}
