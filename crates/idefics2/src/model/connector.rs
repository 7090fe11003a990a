//! Connector (`Idefics2Connector`): SwiGLU modality projection from the vision width to the text
//! width, then the perceiver resampler down to `n_latents` tokens per image.

use burn::tensor::Tensor;

use crate::config::Idefics2Config;
use crate::model::attention::AttentionMask;
use crate::model::layers::GatedMlp;
use crate::model::perceiver::PerceiverResampler;
use crate::weights::TensorLoader;

#[derive(Debug, Clone)]
pub struct Connector {
    pub modality_projection: GatedMlp,
    pub perceiver_resampler: PerceiverResampler,
}

impl Connector {
    pub fn load(loader: &mut TensorLoader, prefix: &str, config: &Idefics2Config) -> Self {
        let text = &config.text_config;
        Self {
            modality_projection: GatedMlp::load(
                loader,
                &format!("{prefix}.modality_projection"),
                config.vision_config.hidden_size,
                text.intermediate_size,
                text.hidden_size,
                text.hidden_act,
            ),
            perceiver_resampler: PerceiverResampler::load(
                loader,
                &format!("{prefix}.perceiver_resampler"),
                &config.perceiver_config,
            ),
        }
    }

    /// # Shapes
    /// - `image_hidden`: `[images, patches, vision_hidden]`
    /// - `mask`: key padding over `patches + n_latents` keys
    /// - returns `[images, n_latents, text_hidden]`
    pub fn forward(&self, image_hidden: Tensor<3>, mask: &AttentionMask) -> Tensor<3> {
        let _profile = crate::profile::scope("connector: other", || image_hidden.device());
        let context = self.modality_projection.forward(image_hidden);
        self.perceiver_resampler.forward(context, mask)
    }
}
