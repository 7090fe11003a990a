//! Huffman entropy decoding of baseline and progressive scans into quantized DCT coefficients
//! (`jdhuff.c`, `jdphuff.c`). Coefficients are exact by construction, so any correct decoder
//! agrees here; the libjpeg-specific parts are how bits past a marker read (as zeros) and
//! 16-bit coefficient storage.

use super::JpegError;

/// Zigzag position -> natural (row-major) position.
pub(super) const NATURAL_ORDER: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// `jpeg_natural_order[k]`; libjpeg pads its table with 63s so corrupt runs past the end land
/// on the last coefficient.
fn natural(k: usize) -> usize {
    NATURAL_ORDER[k.min(63)]
}

/// A canonical Huffman table (`DHT`).
#[derive(Debug, Clone)]
pub(super) struct HuffmanTable {
    /// Largest code of each length 1..=16 (-1 when none), as in libjpeg's `maxcode`.
    maxcode: [i32; 18],
    /// `valptr[l] - mincode[l]`: index into `values` of a code of length `l`.
    valoffset: [i32; 17],
    values: Vec<u8>,
}

impl HuffmanTable {
    pub fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, JpegError> {
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total != values.len() || total > 256 {
            return Err(JpegError::Corrupt("bad Huffman table".into()));
        }
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let (mut code, mut index) = (0i32, 0i32);
        for len in 1..=16 {
            let count = i32::from(counts[len - 1]);
            if count > 0 {
                valoffset[len] = index - code;
                code += count;
                index += count;
                maxcode[len] = code - 1;
            }
            if code > (1 << len) {
                return Err(JpegError::Corrupt("bad Huffman code lengths".into()));
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Ok(Self {
            maxcode,
            valoffset,
            values,
        })
    }
}

/// Reads the entropy-coded bytes of one scan, unstuffing `FF 00` and stopping at markers.
pub(super) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    bits: u64,
    n_bits: u32,
    /// A marker was reached: further bits read as zeros (libjpeg's behavior).
    at_marker: bool,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            bits: 0,
            n_bits: 0,
            at_marker: false,
        }
    }

    /// Position of the first byte not consumed (the next marker once the scan is done).
    pub fn position(&self) -> usize {
        self.pos
    }

    fn fill(&mut self) {
        while self.n_bits <= 56 {
            let byte = if self.at_marker || self.pos >= self.data.len() {
                self.at_marker = true;
                0
            } else if self.data[self.pos] == 0xFF {
                match self.data.get(self.pos + 1) {
                    Some(0x00) => {
                        self.pos += 2;
                        0xFF
                    }
                    _ => {
                        self.at_marker = true;
                        0
                    }
                }
            } else {
                self.pos += 1;
                self.data[self.pos - 1]
            };
            self.bits |= u64::from(byte) << (56 - self.n_bits);
            self.n_bits += 8;
        }
    }

    pub fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.n_bits < n {
            self.fill();
        }
        let v = (self.bits >> (64 - n)) as u32;
        self.bits <<= n;
        self.n_bits -= n;
        v
    }

    pub fn bit(&mut self) -> bool {
        self.bits(1) == 1
    }

    /// `HUFF_EXTEND(receive(s), s)`.
    pub fn receive_extend(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        let v = self.bits(s) as i32;
        if v < (1 << (s - 1)) {
            v - (1 << s) + 1
        } else {
            v
        }
    }

    pub fn decode(&mut self, table: &HuffmanTable) -> Result<u8, JpegError> {
        let mut code = 0i32;
        for len in 1..=16 {
            code = (code << 1) | self.bits(1) as i32;
            if code <= table.maxcode[len] {
                let index = (table.valoffset[len] + code) as usize;
                return table
                    .values
                    .get(index)
                    .copied()
                    .ok_or_else(|| JpegError::Corrupt("bad Huffman code".into()));
            }
        }
        Err(JpegError::Corrupt("bad Huffman code".into()))
    }

    /// Drops buffered bits and consumes an `RSTn` marker if one is next.
    pub fn restart(&mut self) {
        self.bits = 0;
        self.n_bits = 0;
        self.at_marker = false;
        while self.pos + 1 < self.data.len() && self.data[self.pos] == 0xFF {
            match self.data[self.pos + 1] {
                0xFF => self.pos += 1,
                0xD0..=0xD7 => {
                    self.pos += 2;
                    return;
                }
                _ => return,
            }
        }
    }
}

/// What one scan decodes (from `SOS`).
#[derive(Debug, Clone, Copy)]
pub(super) struct ScanParams {
    pub ss: usize,
    pub se: usize,
    pub ah: u32,
    pub al: u32,
    pub progressive: bool,
}

/// Per-scan decoding state of one component.
pub(super) struct ScanComponent<'t> {
    pub dc: Option<&'t HuffmanTable>,
    pub ac: Option<&'t HuffmanTable>,
    pub dc_pred: i32,
}

fn table(t: Option<&HuffmanTable>) -> Result<&HuffmanTable, JpegError> {
    t.ok_or_else(|| JpegError::Unsupported("scan uses an undefined Huffman table".into()))
}

/// Decodes one block of a scan into `block` (natural order), updating `eobrun`.
pub(super) fn decode_block(
    reader: &mut BitReader<'_>,
    comp: &mut ScanComponent<'_>,
    block: &mut [i16; 64],
    scan: ScanParams,
    eobrun: &mut u32,
) -> Result<(), JpegError> {
    if !scan.progressive {
        return decode_sequential(reader, comp, block);
    }
    match (scan.ss == 0, scan.ah == 0) {
        (true, true) => {
            let s = u32::from(reader.decode(table(comp.dc)?)?);
            comp.dc_pred = comp.dc_pred.wrapping_add(reader.receive_extend(s));
            block[0] = (comp.dc_pred << scan.al) as i16;
        }
        (true, false) => {
            if reader.bit() {
                block[0] |= (1i32 << scan.al) as i16;
            }
        }
        (false, true) => decode_ac_first(reader, table(comp.ac)?, block, scan, eobrun)?,
        (false, false) => decode_ac_refine(reader, table(comp.ac)?, block, scan, eobrun)?,
    }
    Ok(())
}

fn decode_sequential(
    reader: &mut BitReader<'_>,
    comp: &mut ScanComponent<'_>,
    block: &mut [i16; 64],
) -> Result<(), JpegError> {
    let s = u32::from(reader.decode(table(comp.dc)?)?);
    comp.dc_pred = comp.dc_pred.wrapping_add(reader.receive_extend(s));
    block[0] = comp.dc_pred as i16;
    let ac = table(comp.ac)?;
    let mut k = 1;
    while k < 64 {
        let rs = reader.decode(ac)?;
        let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r;
            block[natural(k)] = reader.receive_extend(s) as i16;
        } else if r != 15 {
            break;
        } else {
            k += 15;
        }
        k += 1;
    }
    Ok(())
}

fn decode_ac_first(
    reader: &mut BitReader<'_>,
    ac: &HuffmanTable,
    block: &mut [i16; 64],
    scan: ScanParams,
    eobrun: &mut u32,
) -> Result<(), JpegError> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = scan.ss;
    while k <= scan.se {
        let rs = reader.decode(ac)?;
        let (r, s) = (u32::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r as usize;
            block[natural(k)] = (reader.receive_extend(s) << scan.al) as i16;
        } else if r == 15 {
            k += 15;
        } else {
            *eobrun = (1 << r) - 1;
            if r > 0 {
                *eobrun += reader.bits(r);
            }
            break;
        }
        k += 1;
    }
    Ok(())
}

fn decode_ac_refine(
    reader: &mut BitReader<'_>,
    ac: &HuffmanTable,
    block: &mut [i16; 64],
    scan: ScanParams,
    eobrun: &mut u32,
) -> Result<(), JpegError> {
    let p1 = (1i32 << scan.al) as i16;
    let m1 = (-1i32 << scan.al) as i16;
    let refine = |reader: &mut BitReader<'_>, coef: &mut i16| {
        if reader.bit() && (*coef & p1) == 0 {
            *coef = if *coef >= 0 {
                coef.wrapping_add(p1)
            } else {
                coef.wrapping_add(m1)
            };
        }
    };
    let mut k = scan.ss;
    if *eobrun == 0 {
        while k <= scan.se {
            let rs = reader.decode(ac)?;
            let (mut r, s) = (i32::from(rs >> 4), rs & 15);
            let mut value = 0i16;
            if s != 0 {
                value = if reader.bit() { p1 } else { m1 };
            } else if r != 15 {
                *eobrun = 1 << r;
                if r > 0 {
                    *eobrun += reader.bits(r as u32);
                }
                break;
            }
            while k <= scan.se {
                let coef = &mut block[NATURAL_ORDER[k]];
                if *coef != 0 {
                    refine(reader, coef);
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if value != 0 {
                block[natural(k)] = value;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= scan.se {
            let coef = &mut block[NATURAL_ORDER[k]];
            if *coef != 0 {
                refine(reader, coef);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}
