//! The processor's output and the model's image input: normalised pixels and their mask on the
//! host, padded to one size for the whole batch, as `Idefics2ImageProcessor` returns them.

/// # Shapes
/// - `pixel_values`: f32 `[batch, max_images, 3, height, width]`, row-major. Real pixels are
///   normalized (in `[-1, 1]` with mean/std 0.5); padding pixels and padding images are `0.0`.
/// - `pixel_attention_mask`: u8 `[batch, max_images, height, width]`, 1 on real pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelBatch {
    pub pixel_values: Vec<f32>,
    pub pixel_attention_mask: Vec<u8>,
    /// `[batch, max_images, channels, height, width]`
    pub shape: [usize; 5],
    /// Real `(height, width)` of each image after splitting and resizing, per sample (empty when
    /// the pixels did not come from the processor).
    pub image_sizes: Vec<Vec<(usize, usize)>>,
}

impl PixelBatch {
    /// `[batch, max_images, height, width]`, the shape of `pixel_attention_mask`.
    pub fn mask_shape(&self) -> [usize; 4] {
        let [b, n, _, h, w] = self.shape;
        [b, n, h, w]
    }

    pub fn image_count(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    /// Pixels of the `index`-th image in row-major (batch, image) order: `[channels, height, width]`.
    pub fn image(&self, index: usize) -> &[f32] {
        let [_, _, c, h, w] = self.shape;
        &self.pixel_values[index * c * h * w..(index + 1) * c * h * w]
    }

    /// Mask of the `index`-th image: `[height, width]`.
    pub fn mask(&self, index: usize) -> &[u8] {
        let [_, _, _, h, w] = self.shape;
        &self.pixel_attention_mask[index * h * w..(index + 1) * h * w]
    }
}
