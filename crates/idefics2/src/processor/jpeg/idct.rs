//! libjpeg-turbo's accurate integer inverse DCT (`jpeg_idct_islow`, `src/jidctint.c`), the
//! default `JDCT_ISLOW` method Pillow decodes with. Its SIMD versions give the same bytes.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

#[inline]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// `IDCT_range_limit` indexed with `& RANGE_MASK`: centers on 128, saturates within
/// `[-512, 511]` and wraps beyond, exactly like the C table.
#[inline]
fn range_limit(x: i64) -> u8 {
    let j = (x & 1023) as i32;
    match j {
        0..=127 => (j + 128) as u8,
        128..=511 => 255,
        512..=895 => 0,
        _ => (j - 896) as u8,
    }
}

/// One even/odd butterfly of the 8-point IDCT on `v[0..8]`; returns the 8 undescaled outputs
/// in natural order.
#[inline]
fn idct_1d(v: [i64; 8], dc_shift: u32) -> [i64; 8] {
    let (z2, z3) = (v[2], v[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (v[0] + v[4]) << dc_shift;
    let tmp1 = (v[0] - v[4]) << dc_shift;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);

    let (mut t0, mut t1, mut t2, mut t3) = (v[7], v[5], v[3], v[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// Dequantizes `coefs` (natural order) with `quant` and writes the 8x8 samples to
/// `out[row * stride + col]`.
pub(super) fn idct_islow(coefs: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut workspace = [0i64; 64];
    for col in 0..8 {
        let dequant =
            |row: usize| i64::from(coefs[row * 8 + col]) * i64::from(quant[row * 8 + col]);
        if (1..8).all(|row| coefs[row * 8 + col] == 0) {
            let dc = dequant(0) << PASS1_BITS;
            for row in 0..8 {
                workspace[row * 8 + col] = dc;
            }
            continue;
        }
        let column = idct_1d(std::array::from_fn(dequant), CONST_BITS);
        for (row, v) in column.into_iter().enumerate() {
            // C stores pass-1 results in an `int`.
            workspace[row * 8 + col] = i64::from(descale(v, CONST_BITS - PASS1_BITS) as i32);
        }
    }
    for row in 0..8 {
        let w: [i64; 8] = std::array::from_fn(|i| workspace[row * 8 + i]);
        let line = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&v| v == 0) {
            line.fill(range_limit(descale(w[0], PASS1_BITS + 3)));
            continue;
        }
        let samples = idct_1d(w, CONST_BITS);
        for (o, v) in line.iter_mut().zip(samples) {
            *o = range_limit(descale(v, CONST_BITS + PASS1_BITS + 3));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dc_only_block_is_flat() {
        let mut coefs = [0i16; 64];
        coefs[0] = 40; // 40 * 2 / 8 = 10 above mid-gray
        let quant = [2u16; 64];
        let mut out = [0u8; 64];
        idct_islow(&coefs, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 138), "{out:?}");
    }

    #[test]
    fn range_limit_saturates_and_wraps_like_the_table() {
        assert_eq!(range_limit(-128), 0);
        assert_eq!(range_limit(0), 128);
        assert_eq!(range_limit(127), 255);
        assert_eq!(range_limit(300), 255);
        assert_eq!(range_limit(-300), 0);
    }
}
