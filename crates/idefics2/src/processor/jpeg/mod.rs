//! JPEG decoding that gives Pillow's pixels (libjpeg-turbo with its defaults: accurate integer
//! IDCT, fancy upsampling), for the parity of the image pipeline: the `image` crate's decoder
//! (zune-jpeg) rounds differently and differs by up to ~6/255 on chroma-subsampled files.
//!
//! Covers 8-bit Huffman-coded baseline, extended and progressive JPEGs with 1, 3 or 4 (CMYK /
//! YCCK, converted to RGB as Pillow's `convert("RGB")` does) components: nearly every JPEG. Anything else returns [`JpegError::Unsupported`] and the caller
//! falls back to the `image` crate. Port of libjpeg-turbo `src/jdmarker.c` (the parts used),
//! `jdapimin.c`'s colorspace guess, `jdhuff.c`/`jdphuff.c`, `jidctint.c`, `jdsample.c`, `jdcolor.c`.

mod entropy;
mod idct;
mod upsample;

use entropy::{BitReader, HuffmanTable, NATURAL_ORDER, ScanComponent, ScanParams};
use upsample::Plane;

/// Pillow's `Image.MAX_IMAGE_PIXELS`; larger files go to the `image` crate and its limits.
const MAX_PIXELS: usize = 89_478_485;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JpegError {
    /// A valid file this decoder does not handle (arithmetic coding, CMYK, 12-bit, ...).
    Unsupported(String),
    Corrupt(String),
}

/// Decoded pixels: `[height, width, channels]` with 1 (gray) or 3 (RGB) channels.
pub(crate) struct JpegImage {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant_index: usize,
    /// Blocks per row and column, padded to whole MCUs.
    blocks_w: usize,
    blocks_h: usize,
    coefs: Vec<[i16; 64]>,
}

struct Frame {
    progressive: bool,
    width: usize,
    height: usize,
    components: Vec<Component>,
    h_max: usize,
    v_max: usize,
}

impl Frame {
    /// `downsampled_width/height` of a component (`jdinput.c`).
    fn component_size(&self, c: &Component) -> (usize, usize) {
        (
            (self.width * c.h).div_ceil(self.h_max),
            (self.height * c.v).div_ceil(self.v_max),
        )
    }
}

#[derive(Default)]
struct Decoder {
    quant: [Option<[u16; 64]>; 4],
    dc_tables: [Option<HuffmanTable>; 4],
    ac_tables: [Option<HuffmanTable>; 4],
    restart_interval: usize,
    frame: Option<Frame>,
    saw_jfif: bool,
    adobe_transform: Option<u8>,
}

fn corrupt(message: &str) -> JpegError {
    JpegError::Corrupt(message.to_owned())
}

fn u16_at(data: &[u8], pos: usize) -> Result<usize, JpegError> {
    match data.get(pos..pos + 2) {
        Some(b) => Ok(usize::from(u16::from_be_bytes([b[0], b[1]]))),
        None => Err(corrupt("truncated marker segment")),
    }
}

/// Decodes a whole JPEG file.
pub(crate) fn decode_jpeg(data: &[u8]) -> Result<JpegImage, JpegError> {
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(corrupt("not a JPEG (no SOI)"));
    }
    let mut decoder = Decoder::default();
    let mut pos = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1;
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            return Err(corrupt("truncated JPEG (no EOI)"));
        };
        pos += 1;
        match marker {
            0xD9 => break,
            0x00 | 0x01 | 0xD0..=0xD7 => {}
            0xDA => pos = decoder.scan(data, pos)?,
            _ => {
                let len = u16_at(data, pos)?;
                if len < 2 {
                    return Err(corrupt("bad marker segment length"));
                }
                let segment = data
                    .get(pos + 2..pos + len)
                    .ok_or_else(|| corrupt("truncated marker segment"))?;
                decoder.segment(marker, segment)?;
                pos += len;
            }
        }
    }
    decoder.finish()
}

impl Decoder {
    fn segment(&mut self, marker: u8, seg: &[u8]) -> Result<(), JpegError> {
        match marker {
            0xC0..=0xC2 => self.start_of_frame(marker == 0xC2, seg),
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => Err(JpegError::Unsupported(format!(
                "SOF{} (lossless, hierarchical or arithmetic coding)",
                marker - 0xC0
            ))),
            0xC4 => self.huffman_tables(seg),
            0xDB => self.quant_tables(seg),
            0xDD => {
                self.restart_interval = u16_at(seg, 0)?;
                Ok(())
            }
            0xDC => Err(JpegError::Unsupported("DNL marker".into())),
            0xE0 => {
                self.saw_jfif |= seg.len() >= 14 && seg.starts_with(b"JFIF\0");
                Ok(())
            }
            0xEE => {
                if seg.len() >= 12 && seg.starts_with(b"Adobe") {
                    self.adobe_transform = Some(seg[11]);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn start_of_frame(&mut self, progressive: bool, seg: &[u8]) -> Result<(), JpegError> {
        if self.frame.is_some() {
            return Err(corrupt("two frames"));
        }
        if seg.len() < 6 {
            return Err(corrupt("short SOF"));
        }
        if seg[0] != 8 {
            return Err(JpegError::Unsupported(format!("{}-bit samples", seg[0])));
        }
        let height = u16_at(seg, 1)?;
        let width = u16_at(seg, 3)?;
        let n = usize::from(seg[5]);
        if width == 0 || height == 0 {
            return Err(JpegError::Unsupported("zero or DNL-defined size".into()));
        }
        if width * height > MAX_PIXELS {
            return Err(JpegError::Unsupported(format!(
                "{width}x{height} is over Pillow's pixel limit"
            )));
        }
        if !(n == 1 || n == 3 || n == 4) || seg.len() < 6 + 3 * n {
            return Err(JpegError::Unsupported(format!("{n} components")));
        }
        let mut components: Vec<Component> = (0..n)
            .map(|i| {
                let c = &seg[6 + 3 * i..9 + 3 * i];
                Component {
                    id: c[0],
                    h: usize::from(c[1] >> 4),
                    v: usize::from(c[1] & 15),
                    quant_index: usize::from(c[2]),
                    blocks_w: 0,
                    blocks_h: 0,
                    coefs: Vec::new(),
                }
            })
            .collect();
        if components
            .iter()
            .any(|c| !(1..=4).contains(&c.h) || !(1..=4).contains(&c.v) || c.quant_index > 3)
        {
            return Err(corrupt("bad sampling factor or table index"));
        }
        let h_max = components.iter().map(|c| c.h).max().unwrap_or(1);
        let v_max = components.iter().map(|c| c.v).max().unwrap_or(1);
        let mcus_x = width.div_ceil(8 * h_max);
        let mcus_y = height.div_ceil(8 * v_max);
        for c in &mut components {
            c.blocks_w = mcus_x * c.h;
            c.blocks_h = mcus_y * c.v;
            c.coefs = vec![[0i16; 64]; c.blocks_w * c.blocks_h];
        }
        self.frame = Some(Frame {
            progressive,
            width,
            height,
            components,
            h_max,
            v_max,
        });
        Ok(())
    }

    fn huffman_tables(&mut self, mut seg: &[u8]) -> Result<(), JpegError> {
        while !seg.is_empty() {
            if seg.len() < 17 {
                return Err(corrupt("short DHT"));
            }
            let (class, index) = (seg[0] >> 4, usize::from(seg[0] & 15));
            let counts: [u8; 16] = std::array::from_fn(|i| seg[1 + i]);
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            let values = seg
                .get(17..17 + total)
                .ok_or_else(|| corrupt("short DHT"))?
                .to_vec();
            if index > 3 || class > 1 {
                return Err(corrupt("bad DHT index"));
            }
            let table = Some(HuffmanTable::new(&counts, values)?);
            if class == 0 {
                self.dc_tables[index] = table;
            } else {
                self.ac_tables[index] = table;
            }
            seg = &seg[17 + total..];
        }
        Ok(())
    }

    fn quant_tables(&mut self, mut seg: &[u8]) -> Result<(), JpegError> {
        while !seg.is_empty() {
            let (precision, index) = (seg[0] >> 4, usize::from(seg[0] & 15));
            let size = if precision == 0 { 64 } else { 128 };
            let body = seg.get(1..1 + size).ok_or_else(|| corrupt("short DQT"))?;
            if index > 3 {
                return Err(corrupt("bad DQT index"));
            }
            let mut table = [0u16; 64];
            for (k, &natural) in NATURAL_ORDER.iter().enumerate() {
                table[natural] = if precision == 0 {
                    u16::from(body[k])
                } else {
                    u16::from_be_bytes([body[2 * k], body[2 * k + 1]])
                };
            }
            self.quant[index] = Some(table);
            seg = &seg[1 + size..];
        }
        Ok(())
    }

    /// Decodes the scan whose header starts at `pos`; returns the position after its data.
    fn scan(&mut self, data: &[u8], pos: usize) -> Result<usize, JpegError> {
        let len = u16_at(data, pos)?;
        let seg = data
            .get(pos + 2..pos + len)
            .ok_or_else(|| corrupt("short SOS"))?;
        let frame = self
            .frame
            .as_mut()
            .ok_or_else(|| corrupt("SOS before SOF"))?;
        let n = usize::from(*seg.first().ok_or_else(|| corrupt("short SOS"))?);
        if n == 0 || n > 4 || seg.len() < 1 + 2 * n + 3 {
            return Err(corrupt("bad SOS"));
        }
        let mut members = Vec::with_capacity(n);
        let mut tables = Vec::with_capacity(n);
        for i in 0..n {
            let (id, t) = (seg[1 + 2 * i], seg[2 + 2 * i]);
            let index = frame
                .components
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| corrupt("SOS names an unknown component"))?;
            members.push(index);
            tables.push((usize::from(t >> 4) & 3, usize::from(t & 15) & 3));
        }
        let p = 1 + 2 * n;
        let params = ScanParams {
            ss: usize::from(seg[p]),
            se: usize::from(seg[p + 1]),
            ah: u32::from(seg[p + 2] >> 4),
            al: u32::from(seg[p + 2] & 15),
            progressive: frame.progressive,
        };
        if params.se > 63 || params.ss > params.se || params.al > 13 {
            return Err(corrupt("bad spectral selection"));
        }
        let mut scan_components: Vec<ScanComponent<'_>> = tables
            .iter()
            .map(|&(dc, ac)| ScanComponent {
                dc: self.dc_tables[dc].as_ref(),
                ac: self.ac_tables[ac].as_ref(),
                dc_pred: 0,
            })
            .collect();
        let mut reader = BitReader::new(data, pos + len);
        let mut eobrun = 0u32;
        // A single-component scan walks that component's blocks without MCU padding.
        let units: Vec<Vec<(usize, usize, usize)>> = if n == 1 {
            let c = &frame.components[members[0]];
            let (w, h) = frame.component_size(c);
            let (bw, bh) = (w.div_ceil(8), h.div_ceil(8));
            (0..bh)
                .flat_map(|by| (0..bw).map(move |bx| vec![(0, bx, by)]))
                .collect()
        } else {
            let mcus_x = frame.width.div_ceil(8 * frame.h_max);
            let mcus_y = frame.height.div_ceil(8 * frame.v_max);
            let comps = &frame.components;
            (0..mcus_y)
                .flat_map(|my| (0..mcus_x).map(move |mx| (mx, my)))
                .map(|(mx, my)| {
                    let mut blocks = Vec::new();
                    for (slot, &ci) in members.iter().enumerate() {
                        let c = &comps[ci];
                        for v in 0..c.v {
                            for h in 0..c.h {
                                blocks.push((slot, mx * c.h + h, my * c.v + v));
                            }
                        }
                    }
                    blocks
                })
                .collect()
        };
        for (i, unit) in units.iter().enumerate() {
            if self.restart_interval > 0 && i > 0 && i % self.restart_interval == 0 {
                reader.restart();
                eobrun = 0;
                scan_components.iter_mut().for_each(|c| c.dc_pred = 0);
            }
            for &(slot, bx, by) in unit {
                let comp = &mut frame.components[members[slot]];
                let index = by * comp.blocks_w + bx;
                let block = &mut comp.coefs[index];
                entropy::decode_block(
                    &mut reader,
                    &mut scan_components[slot],
                    block,
                    params,
                    &mut eobrun,
                )?;
            }
        }
        Ok(reader.position())
    }

    fn finish(self) -> Result<JpegImage, JpegError> {
        let frame = self.frame.ok_or_else(|| corrupt("no frame"))?;
        let mut planes = Vec::with_capacity(frame.components.len());
        for c in &frame.components {
            let quant = self.quant[c.quant_index]
                .as_ref()
                .ok_or_else(|| corrupt("missing quantization table"))?;
            let stride = c.blocks_w * 8;
            let mut samples = vec![0u8; stride * c.blocks_h * 8];
            for by in 0..c.blocks_h {
                for bx in 0..c.blocks_w {
                    let out = &mut samples[by * 8 * stride + bx * 8..];
                    idct::idct_islow(&c.coefs[by * c.blocks_w + bx], quant, out, stride);
                }
            }
            if frame.h_max % c.h != 0 || frame.v_max % c.v != 0 {
                return Err(JpegError::Unsupported("fractional sampling factors".into()));
            }
            let (width, height) = frame.component_size(c);
            let plane = Plane {
                data: &samples,
                stride,
                width,
                height,
            };
            planes.push(upsample::upsample(
                &plane,
                frame.h_max / c.h,
                frame.v_max / c.v,
                frame.width,
                frame.height,
            )?);
        }
        let (width, height) = (frame.width, frame.height);
        if planes.len() == 1 {
            let pixels = planes.pop().unwrap_or_default();
            return Ok(JpegImage {
                width,
                height,
                channels: 1,
                pixels,
            });
        }
        if planes.len() == 4 {
            // jdapimin.c: Adobe transform 0 is CMYK, anything else YCCK; no Adobe marker, CMYK.
            let ycck = self.adobe_transform.is_some_and(|t| t != 0);
            return Ok(JpegImage {
                width,
                height,
                channels: 3,
                pixels: upsample::cmyk_to_rgb(&planes, ycck),
            });
        }
        let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
        let is_rgb = if self.saw_jfif {
            false
        } else if let Some(transform) = self.adobe_transform {
            transform == 0
        } else {
            ids == [b'R', b'G', b'B']
        };
        let pixels = if is_rgb {
            (0..width * height)
                .flat_map(|i| [planes[0][i], planes[1][i], planes[2][i]])
                .collect()
        } else {
            upsample::ycc_to_rgb(&planes[0], &planes[1], &planes[2])
        };
        Ok(JpegImage {
            width,
            height,
            channels: 3,
            pixels,
        })
    }
}
