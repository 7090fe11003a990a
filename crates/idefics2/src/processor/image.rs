//! Image loading and `Idefics2ImageProcessor.preprocess` (transformers 4.54.1, Pillow backend).
//!
//! Steps, as the reference runs them: convert to RGB, split into 4 quadrants + the original
//! (optional), resize each with Pillow's filter, rescale by 1/255 (in f64, stored as f32),
//! normalize `(x - mean) / std` (f32), zero-pad bottom/right to the batch's largest height and
//! width and every sample to the largest image count with all-zero images.
//!
//! Known differences from the reference, all for inputs it mishandles: a first image 1 or 3
//! pixels tall, which transformers takes for a channels-first array; `do_pad: false`, which
//! here still pads (the batch is one array); and a GIF whose first frame does not cover its
//! canvas (Pillow and the `image` crate fill the rest differently).

use std::io::Cursor;
use std::path::Path;

use image::error::DecodingError;
use image::{
    DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage, metadata::Orientation,
};
use tracing::debug;

use super::config::{ImageOptions, ImageProcessorConfig, ImageSize};
use super::jpeg::{self, JpegError};
use super::resize::{RgbRegion, resize_region};
use super::{ProcessorError, Result};
use crate::model_files::ModelFiles;

/// Reads and decodes an image file like `transformers.image_utils.load_image`: applies the EXIF
/// orientation (`ImageOps.exif_transpose`) and converts to RGB the way Pillow's `convert("RGB")`
/// does (alpha dropped, not composited; 16-bit grayscale clipped to 255, other 16-bit samples
/// keep their high byte).
///
/// PNG, JPEG, WebP, GIF (first frame) and BMP are supported. JPEGs go through `processor/jpeg`, a
/// port of libjpeg-turbo's decoding, so their pixels are Pillow's to the bit.
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ProcessorError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    load_from(&bytes, &path.display().to_string())
}

/// [`load_image`] for an encoded image already in memory.
pub fn load_image_bytes(bytes: &[u8]) -> Result<DynamicImage> {
    load_from(bytes, "<bytes>")
}

/// [`load_image_bytes`] for bytes from the network: the decoder may allocate at most
/// `max_alloc` bytes. The declared size is not enough to bound memory: a GIF's frame can be far
/// larger than the logical screen its header declares.
pub fn load_image_bytes_within(bytes: &[u8], max_alloc: u64) -> Result<DynamicImage> {
    let image = decode_limited(bytes, "<bytes>", true, Some(max_alloc))?;
    Ok(DynamicImage::ImageRgb8(to_rgb8(&image, AlphaMode::Drop)))
}

fn load_from(bytes: &[u8], origin: &str) -> Result<DynamicImage> {
    let image = decode(bytes, origin, true)?;
    Ok(DynamicImage::ImageRgb8(to_rgb8(&image, AlphaMode::Drop)))
}

/// Decodes without touching orientation or color mode, like `PIL.Image.open`. Pass the result
/// to [`ImageProcessor::preprocess`] to get the processor's own conversion, which composites
/// transparent pixels onto white instead of dropping alpha.
pub fn decode_image_bytes(bytes: &[u8]) -> Result<DynamicImage> {
    decode(bytes, "<bytes>", false)
}

fn decode(bytes: &[u8], origin: &str, apply_orientation: bool) -> Result<DynamicImage> {
    decode_limited(bytes, origin, apply_orientation, None)
}

fn decode_limited(
    bytes: &[u8],
    origin: &str,
    apply_orientation: bool,
    max_alloc: Option<u64>,
) -> Result<DynamicImage> {
    let decode_error = |source| ProcessorError::DecodeImage {
        origin: origin.to_owned(),
        source,
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_error(image::ImageError::IoError(e)))?;
    if let Some(max_alloc) = max_alloc {
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(max_alloc);
        reader.limits(limits);
    }
    let format = reader.format();
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let orientation = if apply_orientation {
        decoder.orientation().unwrap_or_else(|e| {
            debug!(origin, error = %e, "unreadable EXIF orientation, ignored");
            Orientation::NoTransforms
        })
    } else {
        Orientation::NoTransforms
    };
    let jpeg = match format {
        Some(ImageFormat::Jpeg) => decode_jpeg_like_pillow(bytes, origin)?,
        _ => None,
    };
    let mut image = match jpeg {
        Some(image) => image,
        None => DynamicImage::from_decoder(decoder).map_err(decode_error)?,
    };
    image.apply_orientation(orientation);
    debug!(origin, width = image.width(), height = image.height(), color = ?image.color(), "decoded image");
    Ok(image)
}

/// Pillow's JPEG pixels via [`jpeg::decode_jpeg`]; `None` for JPEG variants it leaves to the
/// `image` crate.
fn decode_jpeg_like_pillow(bytes: &[u8], origin: &str) -> Result<Option<DynamicImage>> {
    let decoded = match jpeg::decode_jpeg(bytes) {
        Ok(decoded) => decoded,
        Err(JpegError::Unsupported(why)) => {
            debug!(origin, %why, "JPEG variant not covered, decoding with the image crate");
            return Ok(None);
        }
        Err(JpegError::Corrupt(why)) => {
            return Err(ProcessorError::DecodeImage {
                origin: origin.to_owned(),
                source: image::ImageError::Decoding(DecodingError::new(
                    ImageFormat::Jpeg.into(),
                    why,
                )),
            });
        }
    };
    let (w, h) = (decoded.width as u32, decoded.height as u32);
    let image = if decoded.channels == 1 {
        image::GrayImage::from_raw(w, h, decoded.pixels).map(DynamicImage::ImageLuma8)
    } else {
        RgbImage::from_raw(w, h, decoded.pixels).map(DynamicImage::ImageRgb8)
    };
    Ok(image)
}

/// What [`to_rgb8`] does with an alpha channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlphaMode {
    /// Pillow's `convert("RGB")` (what `load_image` does).
    Drop,
    /// The image processor's `convert_to_rgb`: `alpha_composite` onto opaque white.
    CompositeOnWhite,
}

/// Converts any decoded image to RGB8 with Pillow's rules for its nearest Pillow mode.
pub fn to_rgb8(image: &DynamicImage, alpha: AlphaMode) -> RgbImage {
    // Pillow opens 16-bit grayscale as "I;16" and clips it to 255 on conversion; 16-bit
    // RGB/RGBA/LA PNGs are unpacked to 8 bits by keeping the high byte.
    let gray16 = |v: u16| v.min(255) as u8;
    let high = |v: u16| (v >> 8) as u8;
    let (w, h) = (image.width(), image.height());
    let from_rgba = |px: &mut dyn Iterator<Item = [u8; 4]>| {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for [r, g, b, a] in px {
            match alpha {
                AlphaMode::Drop => out.extend_from_slice(&[r, g, b]),
                AlphaMode::CompositeOnWhite => {
                    out.extend_from_slice(&[over_white(r, a), over_white(g, a), over_white(b, a)])
                }
            }
        }
        RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
    };
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb.clone(),
        DynamicImage::ImageLuma8(l) => from_rgba(&mut l.pixels().map(|p| [p[0], p[0], p[0], 255])),
        DynamicImage::ImageLumaA8(la) => {
            from_rgba(&mut la.pixels().map(|p| [p[0], p[0], p[0], p[1]]))
        }
        DynamicImage::ImageRgba8(rgba) => from_rgba(&mut rgba.pixels().map(|p| p.0)),
        DynamicImage::ImageLuma16(l) => from_rgba(&mut l.pixels().map(|p| {
            let v = gray16(p[0]);
            [v, v, v, 255]
        })),
        DynamicImage::ImageLumaA16(la) => from_rgba(&mut la.pixels().map(|p| {
            let v = high(p[0]);
            [v, v, v, high(p[1])]
        })),
        DynamicImage::ImageRgb16(rgb) => from_rgba(
            &mut rgb
                .pixels()
                .map(|p| [high(p[0]), high(p[1]), high(p[2]), 255]),
        ),
        DynamicImage::ImageRgba16(rgba) => from_rgba(
            &mut rgba
                .pixels()
                .map(|p| [high(p[0]), high(p[1]), high(p[2]), high(p[3])]),
        ),
        other if other.color().has_alpha() => {
            from_rgba(&mut other.to_rgba8().pixels().map(|p| p.0))
        }
        other => other.to_rgb8(),
    }
}

/// `ImagingAlphaComposite` of a source channel with alpha `a` over opaque white (7-bit fixed point).
fn over_white(c: u8, a: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    let shift_div_255 = |v: u32| ((v >> 8) + v) >> 8;
    if a == 0 {
        return 255;
    }
    let (c, a) = (u32::from(c), u32::from(a));
    let out_a255 = a * 255 + 255 * (255 - a);
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / out_a255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + 255 * coef2;
    (shift_div_255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
}

/// `get_resize_output_image_size`: cap the longest side at `longest_edge` keeping the aspect
/// ratio (truncating), then raise each side to at least `shortest_edge` independently.
/// Returns `(height, width)`.
pub fn resize_output_size(height: usize, width: usize, size: ImageSize) -> (usize, usize) {
    let (max_len, min_len) = (size.longest_edge as usize, size.shortest_edge as usize);
    let aspect_ratio = width as f64 / height as f64;
    let (mut height, mut width) = (height, width);
    if width >= height && width > max_len {
        width = max_len;
        height = (width as f64 / aspect_ratio) as usize;
    } else if height > width && height > max_len {
        height = max_len;
        width = (height as f64 * aspect_ratio) as usize;
    }
    (height.max(min_len), width.max(min_len))
}

pub use crate::pixels::PixelBatch;

/// `Idefics2ImageProcessor` with a fixed config; per-request changes go through [`ImageOptions`].
#[derive(Debug, Clone, Default)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
}

impl ImageProcessor {
    pub fn new(config: ImageProcessorConfig) -> Self {
        Self { config }
    }

    /// Reads `dir/preprocessor_config.json` (transformers' defaults if absent).
    pub fn from_model_files(model: &ModelFiles) -> Result<Self> {
        ImageProcessorConfig::from_model_files(model).map(Self::new)
    }

    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// Loads every path with [`load_image`], then [`Self::preprocess`].
    pub fn preprocess_paths<P: AsRef<Path>>(
        &self,
        paths: &[Vec<P>],
        options: &ImageOptions,
    ) -> Result<PixelBatch> {
        let images = paths
            .iter()
            .map(|sample| sample.iter().map(load_image).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        self.preprocess(&images, options)
    }

    /// Preprocesses `images[sample][image]` into one padded batch.
    ///
    /// # Shapes
    /// See [`PixelBatch`]; with splitting every input image becomes 5 images.
    pub fn preprocess(
        &self,
        images: &[Vec<DynamicImage>],
        options: &ImageOptions,
    ) -> Result<PixelBatch> {
        options.validate()?;
        let config = self.config.with_options(options);
        let mut resized: Vec<Vec<(Vec<u8>, usize, usize)>> = Vec::with_capacity(images.len());
        for sample in images {
            let mut parts = Vec::new();
            for image in sample {
                let alpha = if config.do_convert_rgb {
                    AlphaMode::CompositeOnWhite
                } else {
                    AlphaMode::Drop
                };
                let converted;
                let rgb = match image.as_rgb8() {
                    Some(rgb) => rgb,
                    None => {
                        converted = to_rgb8(image, alpha);
                        &converted
                    }
                };
                parts.extend(split_and_resize(rgb, &config)?);
            }
            resized.push(parts);
        }
        let max_images = resized.iter().map(Vec::len).max().unwrap_or(0);
        if max_images == 0 {
            return Err(ProcessorError::EmptyBatch);
        }
        let height = resized.iter().flatten().map(|p| p.1).max().unwrap_or(0);
        let width = resized.iter().flatten().map(|p| p.2).max().unwrap_or(0);
        let shape = [resized.len(), max_images, 3, height, width];
        debug!(?shape, "pixel batch");

        let mut pixel_values = vec![0f32; shape.iter().product()];
        let mut pixel_attention_mask = vec![0u8; resized.len() * max_images * height * width];
        let plane = height * width;
        for (b, sample) in resized.iter().enumerate() {
            for (i, (rgb, h, w)) in sample.iter().enumerate() {
                let slot = b * max_images + i;
                let values = &mut pixel_values[slot * 3 * plane..(slot + 1) * 3 * plane];
                for y in 0..*h {
                    for x in 0..*w {
                        for c in 0..3 {
                            values[c * plane + y * width + x] =
                                to_model_value(rgb[(y * w + x) * 3 + c], c, &config);
                        }
                    }
                }
                let mask = &mut pixel_attention_mask[slot * plane..(slot + 1) * plane];
                for row in mask.chunks_exact_mut(width).take(*h) {
                    row[..*w].fill(1);
                }
            }
        }
        let image_sizes = resized
            .iter()
            .map(|s| s.iter().map(|p| (p.1, p.2)).collect())
            .collect();
        Ok(PixelBatch {
            pixel_values,
            pixel_attention_mask,
            shape,
            image_sizes,
        })
    }
}

/// `rescale` (`u8 as f64 * factor`, stored as f32) then `normalize` (in f32), as numpy does.
#[inline]
fn to_model_value(v: u8, channel: usize, config: &ImageProcessorConfig) -> f32 {
    let mut x = if config.do_rescale {
        (f64::from(v) * config.rescale_factor) as f32
    } else {
        f32::from(v)
    };
    if config.do_normalize {
        x = (x - config.image_mean[channel]) / config.image_std[channel];
    }
    x
}

/// `split_image` (optional) then `resize` for one RGB image: `(packed RGB8, height, width)` each.
fn split_and_resize(
    rgb: &RgbImage,
    config: &ImageProcessorConfig,
) -> Result<Vec<(Vec<u8>, usize, usize)>> {
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    if width == 0 || height == 0 {
        return Err(ProcessorError::EmptyImage {
            width: rgb.width(),
            height: rgb.height(),
        });
    }
    let whole = RgbRegion::whole(rgb.as_raw(), width, height);
    let regions = if config.do_image_splitting {
        if width < 2 || height < 2 {
            return Err(ProcessorError::ImageTooSmallToSplit {
                width: rgb.width(),
                height: rgb.height(),
            });
        }
        let (mid_w, mid_h) = (width / 2, height / 2);
        vec![
            whole.crop(0, 0, mid_w, mid_h),
            whole.crop(mid_w, 0, width - mid_w, mid_h),
            whole.crop(0, mid_h, mid_w, height - mid_h),
            whole.crop(mid_w, mid_h, width - mid_w, height - mid_h),
            whole,
        ]
    } else {
        vec![whole]
    };
    regions
        .into_iter()
        .map(|region| {
            let (h, w) = if config.do_resize {
                resize_output_size(region.height, region.width, config.size)
            } else {
                (region.height, region.width)
            };
            if h == 0 || w == 0 {
                return Err(ProcessorError::EmptyImage {
                    width: w as u32,
                    height: h as u32,
                });
            }
            Ok((resize_region(region, w, h, config.resample), h, w))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_follows_the_reference_rule() {
        let size = ImageSize {
            longest_edge: 980,
            shortest_edge: 378,
        };
        assert_eq!(resize_output_size(1500, 2000, size), (735, 980));
        assert_eq!(resize_output_size(40, 900, size), (378, 900));
        assert_eq!(resize_output_size(700, 30, size), (700, 378));
        assert_eq!(resize_output_size(3000, 1000, size), (980, 378));
        assert_eq!(resize_output_size(251, 377, size), (378, 378));
    }

    #[test]
    fn composite_matches_pillow_corner_cases() {
        assert_eq!(over_white(10, 0), 255);
        for c in [0u8, 1, 127, 254, 255] {
            assert_eq!(over_white(c, 255), c);
        }
        assert_eq!(over_white(0, 128), 127);
    }

    #[test]
    fn split_needs_two_pixels_per_side() {
        let config = ImageProcessorConfig {
            do_image_splitting: true,
            ..Default::default()
        };
        let processor = ImageProcessor::new(config);
        let thin = DynamicImage::ImageRgb8(RgbImage::new(1, 9));
        let err = processor.preprocess(&[vec![thin]], &ImageOptions::default());
        assert!(matches!(
            err,
            Err(ProcessorError::ImageTooSmallToSplit {
                width: 1,
                height: 9
            })
        ));
    }

    #[test]
    fn padding_images_are_zero_with_zero_mask() {
        let processor = ImageProcessor::default();
        let a = DynamicImage::ImageRgb8(RgbImage::from_pixel(10, 8, image::Rgb([255, 0, 128])));
        let batch = processor
            .preprocess(
                &[vec![a.clone(), a.clone()], vec![a]],
                &ImageOptions::default(),
            )
            .expect("preprocess");
        assert_eq!(batch.shape, [2, 2, 3, 378, 378]);
        let per_image = 3 * 378 * 378;
        assert!(
            batch.pixel_values[3 * per_image..]
                .iter()
                .all(|&v| v == 0.0)
        );
        assert_eq!(batch.pixel_values[0], 1.0);
        assert_eq!(batch.pixel_values[378 * 378], -1.0);
        let mask_per_image = 378 * 378;
        assert!(
            batch.pixel_attention_mask[3 * mask_per_image..]
                .iter()
                .all(|&v| v == 0)
        );
        assert!(
            batch.pixel_attention_mask[..3 * mask_per_image]
                .iter()
                .all(|&v| v == 1)
        );
    }
}
