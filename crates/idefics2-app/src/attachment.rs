//! An image the user added: the decoded picture (what the model gets) and a small texture (what
//! the composer and the history show).

use std::sync::Arc;

use idefics2::processor::{DynamicImage, decode_image_bytes};

/// Longest side of a thumbnail texture, in pixels.
const THUMBNAIL: u32 = 160;

#[derive(Clone)]
pub struct Attachment {
    pub name: String,
    pub image: Arc<DynamicImage>,
    pub texture: egui::TextureHandle,
}

impl Attachment {
    /// Decodes an image file's bytes; the error names the file.
    pub fn from_bytes(ctx: &egui::Context, name: &str, bytes: &[u8]) -> Result<Self, String> {
        let image = decode_image_bytes(bytes).map_err(|e| format!("{name}: {e}"))?;
        Ok(Self::from_image(ctx, name, image))
    }

    pub fn from_image(ctx: &egui::Context, name: &str, image: DynamicImage) -> Self {
        let thumb = image.thumbnail(THUMBNAIL, THUMBNAIL).to_rgba8();
        let size = [thumb.width() as usize, thumb.height() as usize];
        let pixels = egui::ColorImage::from_rgba_unmultiplied(size, thumb.as_raw());
        let texture = ctx.load_texture(name, pixels, egui::TextureOptions::LINEAR);
        Self {
            name: name.to_owned(),
            image: Arc::new(image),
            texture,
        }
    }

    /// A pasted picture (egui hands it over as RGBA pixels).
    pub fn from_color_image(ctx: &egui::Context, name: &str, pixels: &egui::ColorImage) -> Self {
        let [w, h] = pixels.size;
        let rgba: Vec<u8> = pixels.pixels.iter().flat_map(|c| c.to_array()).collect();
        let image = image::RgbaImage::from_raw(w as u32, h as u32, rgba)
            .map(DynamicImage::ImageRgba8)
            .unwrap_or_else(|| DynamicImage::new_rgba8(1, 1));
        Self::from_image(ctx, name, image)
    }

    pub fn size(&self) -> (u32, u32) {
        (self.image.width(), self.image.height())
    }

    /// The thumbnail at most `height` points high.
    pub fn show(&self, ui: &mut egui::Ui, height: f32) -> egui::Response {
        ui.add(
            egui::Image::new(&self.texture)
                .max_height(height)
                .max_width(height * 2.0),
        )
        .on_hover_text(format!(
            "{} ({}x{})",
            self.name,
            self.size().0,
            self.size().1
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_images_are_errors_naming_the_file() {
        let ctx = egui::Context::default();
        let error = Attachment::from_bytes(&ctx, "broken.png", b"\x89PNG not really")
            .err()
            .expect("garbage must not decode");
        assert!(error.starts_with("broken.png: "), "{error}");
        let png = include_bytes!("../../../assets/samples/shapes.png");
        let image = Attachment::from_bytes(&ctx, "shapes.png", png).expect("sample decodes");
        assert!(image.size().0 > 0 && image.texture.size()[0] <= THUMBNAIL as usize);
    }
}
