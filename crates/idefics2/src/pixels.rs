//! The processor's output and the model's image input: normalised pixels and their mask on the
//! host, padded to one size for the whole batch, as `Idefics2ImageProcessor` returns them.

/// # Shapes
/// - `pixel_values`: `[batch, images, channels, height, width]` f32
/// - `pixel_attention_mask`: `[batch, images, height, width]`, 1 on real pixels
#[derive(Debug, Clone, PartialEq)]
pub struct PixelBatch {
    pub pixel_values: Vec<f32>,
    pub pixel_attention_mask: Vec<u8>,
    /// `[batch, images, channels, height, width]`
    pub shape: [usize; 5],
}

impl PixelBatch {
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
