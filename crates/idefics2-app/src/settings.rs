//! The settings beside the chat. Image and generation settings apply to the next message; device,
//! precision and quantization need the model loaded again.

use idefics2::processor::ImageOptions;
use idefics2::quant::{QuantFormat, QuantPolicy};
use idefics2::{Sampling, SamplingOptions};

use crate::engine::{ModelInfo, Precision};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Gpu,
    /// burn's CPU device (native only).
    Cpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    None,
    Q8,
    Q4,
}

impl QuantKind {
    pub fn policy(self) -> QuantPolicy {
        let format = match self {
            Self::None => None,
            Self::Q8 => Some(QuantFormat::Q8 { group: 32 }),
            Self::Q4 => Some(QuantFormat::Q4 { group: 32 }),
        };
        QuantPolicy {
            format,
            ..QuantPolicy::NONE
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub do_image_splitting: bool,
    pub longest_edge: u32,
    pub max_new_tokens: usize,
    pub sample: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub repetition_penalty: f32,
    pub device: DeviceKind,
    pub precision: Precision,
    pub quant: QuantKind,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            do_image_splitting: false,
            longest_edge: 980,
            max_new_tokens: 64,
            sample: false,
            temperature: 0.7,
            top_p: 0.9,
            seed: 0,
            repetition_penalty: 1.0,
            device: DeviceKind::Gpu,
            precision: Precision::F32,
            quant: QuantKind::None,
        }
    }
}

/// The resolution slider: 378 to 980 in steps of 14 (a patch), reaching down to the model's own
/// longest edge when that is smaller (the embedded demo model sees 224 px).
pub const MAX_EDGE: u32 = 980;
pub const MIN_EDGE: u32 = 378;

impl Settings {
    /// Takes the model's processor defaults.
    pub fn adopt_model(&mut self, info: &ModelInfo) {
        self.longest_edge = info.longest_edge.clamp(14, MAX_EDGE);
        self.do_image_splitting = info.do_image_splitting;
    }

    pub fn image_options(&self) -> ImageOptions {
        ImageOptions {
            do_image_splitting: Some(self.do_image_splitting),
            longest_edge: Some(self.longest_edge),
            shortest_edge: None,
        }
    }

    pub fn sampling(&self) -> SamplingOptions {
        SamplingOptions {
            sampling: if self.sample {
                Sampling::Sample {
                    temperature: self.temperature,
                    top_k: 0,
                    top_p: self.top_p,
                    seed: self.seed,
                }
            } else {
                Sampling::Greedy
            },
            repetition_penalty: self.repetition_penalty,
        }
    }

    /// `<image>` tokens that `images` new images add to the prompt: each image is one crop, or
    /// four crops and the whole image with splitting on.
    pub fn image_tokens(&self, images: usize, image_seq_len: usize) -> usize {
        let crops = if self.do_image_splitting { 5 } else { 1 };
        images * crops * image_seq_len
    }

    /// The settings panel; returns true when the user asked to reload the model with the
    /// device, precision and quantization shown.
    pub fn ui(&mut self, ui: &mut egui::Ui, model: Option<&ModelInfo>, can_reload: bool) -> bool {
        ui.heading("Images");
        ui.checkbox(
            &mut self.do_image_splitting,
            "Image splitting (4 crops + whole)",
        );
        let min_edge = model.map_or(MIN_EDGE, |m| m.longest_edge.min(MIN_EDGE));
        ui.add(
            egui::Slider::new(&mut self.longest_edge, min_edge..=MAX_EDGE)
                .step_by(14.0)
                .text("longest edge (px)"),
        );
        ui.separator();
        ui.heading("Answer");
        ui.add(egui::Slider::new(&mut self.max_new_tokens, 1..=1024).text("max new tokens"));
        ui.horizontal(|ui| {
            ui.radio_value(&mut self.sample, false, "Greedy");
            ui.radio_value(&mut self.sample, true, "Sampling");
        });
        ui.add_enabled_ui(self.sample, |ui| {
            ui.add(egui::Slider::new(&mut self.temperature, 0.05..=2.0).text("temperature"));
            ui.add(egui::Slider::new(&mut self.top_p, 0.05..=1.0).text("top-p"));
            ui.add(egui::Slider::new(&mut self.seed, 0..=1000).text("seed"));
        });
        ui.add(
            egui::Slider::new(&mut self.repetition_penalty, 1.0..=2.0).text("repetition penalty"),
        );
        ui.separator();
        ui.heading("Model");
        #[cfg(not(target_family = "wasm"))]
        ui.horizontal(|ui| {
            ui.label("device");
            ui.radio_value(&mut self.device, DeviceKind::Gpu, "GPU");
            ui.radio_value(&mut self.device, DeviceKind::Cpu, "CPU");
        });
        ui.horizontal(|ui| {
            ui.label("precision");
            ui.radio_value(&mut self.precision, Precision::F32, "f32");
            ui.radio_value(&mut self.precision, Precision::F16, "f16");
            #[cfg(not(target_family = "wasm"))]
            {
                let cpu = self.device == DeviceKind::Cpu;
                ui.add_enabled_ui(cpu, |ui| {
                    ui.radio_value(&mut self.precision, Precision::Bf16, "bf16")
                        .on_disabled_hover_text("bf16 runs on the CPU only (WGSL has no bf16)");
                });
                if !cpu && self.precision == Precision::Bf16 {
                    self.precision = Precision::F32;
                }
            }
        });
        ui.horizontal(|ui| {
            ui.label("quantization");
            ui.radio_value(&mut self.quant, QuantKind::None, "none");
            ui.radio_value(&mut self.quant, QuantKind::Q8, "q8");
            ui.radio_value(&mut self.quant, QuantKind::Q4, "q4");
        });
        ui.add_enabled(can_reload, egui::Button::new("Reload with these"))
            .on_hover_text("Loads the model again on this device, precision and quantization")
            .clicked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tokens_count_crops() {
        let mut settings = Settings::default();
        assert_eq!(settings.image_tokens(2, 64), 128);
        settings.do_image_splitting = true;
        assert_eq!(settings.image_tokens(2, 64), 640);
    }

    /// bf16 is offered on the CPU only; switching to the GPU falls back to f32.
    #[test]
    fn bf16_stays_on_the_cpu() {
        let ctx = egui::Context::default();
        let mut settings = Settings {
            device: DeviceKind::Cpu,
            precision: Precision::Bf16,
            ..Settings::default()
        };
        let show = |settings: &mut Settings| {
            let _ = ctx.run_ui(egui::RawInput::default(), |ui| {
                settings.ui(ui, None, false);
            });
        };
        show(&mut settings);
        assert_eq!(settings.precision, Precision::Bf16);
        settings.device = DeviceKind::Gpu;
        show(&mut settings);
        assert_eq!(settings.precision, Precision::F32);
    }
}
