//! Chroma upsampling (`src/jdsample.c`, "fancy" triangular filters on by default) and
//! color conversion (`src/jdcolor.c`) as libjpeg-turbo does them, plus Pillow's CMYK -> RGB.
//!
//! The vertical filters read the rows above and below; at the image's top and bottom those
//! repeat the first and last real rows (`jdmainct.c` points the context rows there).

use super::JpegError;

/// A decoded component plane: `width x height` real samples in rows `stride` apart.
pub(super) struct Plane<'a> {
    pub data: &'a [u8],
    pub stride: usize,
    pub width: usize,
    pub height: usize,
}

impl Plane<'_> {
    fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.stride..y * self.stride + self.width]
    }
}

/// Upsamples `plane` by `(h_expand, v_expand)` and crops to `out_width x out_height`.
pub(super) fn upsample(
    plane: &Plane<'_>,
    h_expand: usize,
    v_expand: usize,
    out_width: usize,
    out_height: usize,
) -> Result<Vec<u8>, JpegError> {
    let mut out = vec![0u8; out_width * out_height];
    let mut line = vec![0u8; plane.width * h_expand.max(1)];
    let last_row = plane.height.saturating_sub(1);
    let fancy_wide = plane.width > 2;
    for (y, out_row) in out.chunks_exact_mut(out_width).enumerate() {
        let (in_y, sub) = (y / v_expand, y % v_expand);
        let near = plane.row(in_y.min(last_row));
        match (h_expand, v_expand) {
            (1, 1) => line.copy_from_slice(near),
            (2, 1) if fancy_wide => h2v1_fancy(near, &mut line),
            (1, 2) => {
                // h1v2 is always fancy (no width condition in libjpeg-turbo).
                let (far, bias) = if sub == 0 {
                    (plane.row(in_y.saturating_sub(1)), 1)
                } else {
                    (plane.row((in_y + 1).min(last_row)), 2)
                };
                for ((o, &a), &b) in line.iter_mut().zip(near).zip(far) {
                    *o = ((i32::from(a) * 3 + i32::from(b) + bias) >> 2) as u8;
                }
            }
            (2, 2) if fancy_wide => {
                let far = if sub == 0 {
                    plane.row(in_y.saturating_sub(1))
                } else {
                    plane.row((in_y + 1).min(last_row))
                };
                h2v2_fancy(near, far, &mut line);
            }
            (h, v) if h >= 1 && v >= 1 => {
                for (x, o) in line.iter_mut().enumerate() {
                    *o = near[x / h];
                }
            }
            _ => return Err(JpegError::Unsupported("sampling factors".into())),
        }
        out_row.copy_from_slice(&line[..out_width]);
    }
    Ok(out)
}

/// `h2v1_fancy_upsample`: 3/4 nearer + 1/4 further sample, alternating rounding.
fn h2v1_fancy(input: &[u8], out: &mut [u8]) {
    let n = input.len();
    let v = |i: usize| i32::from(input[i]);
    out[0] = input[0];
    out[1] = ((v(0) * 3 + v(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        let center = v(i) * 3;
        out[2 * i] = ((center + v(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((center + v(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((v(n - 1) * 3 + v(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = input[n - 1];
}

/// `h2v2_fancy_upsample` for one output row: vertical 3:1 sums, then horizontal 3:1 with
/// rounding constants 8 and 7.
fn h2v2_fancy(near: &[u8], far: &[u8], out: &mut [u8]) {
    let n = near.len();
    let colsum = |i: usize| i32::from(near[i]) * 3 + i32::from(far[i]);
    let mut this = colsum(0);
    let mut last;
    let mut next = colsum(1);
    out[0] = ((this * 4 + 8) >> 4) as u8;
    out[1] = ((this * 3 + next + 7) >> 4) as u8;
    last = this;
    this = next;
    for i in 1..n - 1 {
        next = colsum(i + 1);
        out[2 * i] = ((this * 3 + last + 8) >> 4) as u8;
        out[2 * i + 1] = ((this * 3 + next + 7) >> 4) as u8;
        last = this;
        this = next;
    }
    out[2 * n - 2] = ((this * 3 + last + 8) >> 4) as u8;
    out[2 * n - 1] = ((this * 4 + 7) >> 4) as u8;
}

const SCALEBITS: u32 = 16;
const ONE_HALF: i64 = 1 << (SCALEBITS - 1);

/// `FIX(x)`: `(x * 65536 + 0.5)` truncated.
fn fix(x: f64) -> i64 {
    (x * f64::from(1u32 << SCALEBITS) + 0.5) as i64
}

/// `build_ycc_rgb_table`: per-sample contributions of Cb and Cr.
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

impl YccTables {
    fn new() -> Self {
        let mut t = Self {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    /// Unclamped `(r, g, b)` of one sample.
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [i32; 3] {
        let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
        [
            y + self.cr_r[cr],
            y + ((self.cb_g[cb] + self.cr_g[cr]) >> SCALEBITS) as i32,
            y + self.cb_b[cb],
        ]
    }
}

fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// `ycc_rgb_convert` into packed RGB.
pub(super) fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8]) -> Vec<u8> {
    let tables = YccTables::new();
    let mut out = Vec::with_capacity(y.len() * 3);
    for ((&y, &cb), &cr) in y.iter().zip(cb).zip(cr) {
        out.extend(tables.rgb(y, cb, cr).map(clamp8));
    }
    out
}

/// Four-component (Adobe) JPEG to RGB the way Pillow gets there: libjpeg's `ycck_cmyk_convert`
/// when `ycck`, Pillow's inverted `CMYK;I` unpacking, then its `cmyk2rgb`.
pub(super) fn cmyk_to_rgb(planes: &[Vec<u8>], ycck: bool) -> Vec<u8> {
    let tables = YccTables::new();
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let [c0, c1, c2, k] = planes else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(c0.len() * 3);
    for (((&a, &b), &c), &k) in c0.iter().zip(c1).zip(c2).zip(k) {
        let raw: [u8; 3] = if ycck {
            tables.rgb(a, b, c).map(|v| clamp8(255 - v))
        } else {
            [a, b, c]
        };
        // Pillow's `255 - k` of its inverted K sample is the raw K.
        let nk = i32::from(k);
        out.extend(raw.map(|v| clamp8(nk - muldiv255(255 - i32::from(v), nk))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fancy_upsampling_of_a_constant_is_constant() {
        let data = vec![90u8; 5 * 3];
        let plane = Plane {
            data: &data,
            stride: 5,
            width: 5,
            height: 3,
        };
        for (h, v) in [(2, 1), (1, 2), (2, 2), (4, 1)] {
            let out = upsample(&plane, h, v, 5 * h - 1, 3 * v - 1).expect("upsample");
            assert!(out.iter().all(|&s| s == 90), "{h}x{v}");
        }
    }

    #[test]
    fn neutral_chroma_is_gray() {
        assert_eq!(
            ycc_to_rgb(&[0, 77, 255], &[128; 3], &[128; 3]),
            vec![0, 0, 0, 77, 77, 77, 255, 255, 255]
        );
    }
}
