//! Idefics2 (`Idefics2ForConditionalGeneration`): SigLIP vision encoder, connector (modality
//! projection + perceiver resampler) and Mistral decoder, with the merge of image features into
//! the text embeddings. Field paths spell the hub's weight names.
//! <https://huggingface.co/HuggingFaceM4/idefics2-8b>

pub mod attention;
pub mod connector;
pub mod layers;
pub mod perceiver;
pub mod rope;
pub mod row_chunks;
pub mod text;
pub mod vision;
pub mod vision_input;

use std::path::Path;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::config::Idefics2Config;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model_files::ModelFiles;
use crate::pixels::PixelBatch;
use crate::quant::{QuantPolicy, StoredQuant};
use crate::weights::{LoadOptions, TensorLoader, WeightFiles};
use attention::AttentionMask;
use connector::Connector;
use layers::Linear;
use text::{TextModel, decoder_mask};
use vision::VisionModel;
use vision_input::VisionInput;

/// The `model.*` part of the checkpoint.
#[derive(Debug, Clone)]
pub struct Idefics2Inner {
    pub vision_model: VisionModel,
    pub connector: Connector,
    pub text_model: TextModel,
}

#[derive(Debug, Clone)]
pub struct Idefics2 {
    pub config: Idefics2Config,
    pub model: Idefics2Inner,
    pub lm_head: Linear,
    /// Bytes of weights on the device.
    pub weight_bytes: usize,
    device: Device,
    dtype: DType,
    /// The half dtype linear weights are held in on the CPU device, if not `dtype`.
    half_linears: Option<DType>,
}

/// Token ids and padding for a left-padded batch, plus its images.
///
/// # Shapes
/// `input_ids`, `attention_mask`: `[batch, seq]`
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u8>,
    pub batch: usize,
    pub seq: usize,
    pub pixels: Option<PixelBatch>,
}

impl ModelInput {
    /// One unpadded prompt.
    pub fn single(input_ids: Vec<u32>, pixels: Option<PixelBatch>) -> Self {
        let seq = input_ids.len();
        Self {
            attention_mask: vec![1; seq],
            input_ids,
            batch: 1,
            seq,
            pixels,
        }
    }

    /// RoPE positions of the prompt as `generate` computes them: `cumsum(mask) - 1`, and 1 on
    /// padding.
    pub fn positions(&self) -> Vec<i64> {
        let mut positions = Vec::with_capacity(self.batch * self.seq);
        for row in self.attention_mask.chunks(self.seq.max(1)) {
            let mut count = 0i64;
            for &m in row {
                count += m as i64;
                positions.push(if m == 0 { 1 } else { count - 1 });
            }
        }
        positions
    }

    fn validate(&self) -> Result<()> {
        let expected = vec![self.batch, self.seq];
        if self.input_ids.len() != self.batch * self.seq
            || self.attention_mask.len() != self.batch * self.seq
        {
            return Err(Error::InputShape {
                what: "input_ids / attention_mask".into(),
                expected,
                got: vec![self.input_ids.len(), self.attention_mask.len()],
            });
        }
        if self.seq == 0 {
            return Err(Error::InputShape {
                what: "input_ids (empty prompt)".into(),
                expected,
                got: vec![0],
            });
        }
        Ok(())
    }
}

/// What [`Idefics2::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub tensors: usize,
    pub stored_bytes: usize,
    /// How the checkpoint stores its linear layers, for people: `none (float weights)`, `AWQ, 4
    /// bits in groups of 128 (224 linear layers)`, ...
    pub quantization: String,
}

impl Idefics2 {
    /// Loads `config.json` and the weights of a hub model directory.
    pub fn load(model_dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_quantized(model_dir, device, dtype, QuantPolicy::NONE)
    }

    /// [`load`](Self::load), quantizing linear layers as `quant` says. A checkpoint written
    /// by `idefics2 quantize` loads as it was saved; asking it for another format is an error.
    pub fn load_quantized(
        model_dir: &Path,
        device: &Device,
        dtype: DType,
        quant: QuantPolicy,
    ) -> Result<Self> {
        let options = LoadOptions::new(dtype, quant);
        Self::load_model_files(&ModelFiles::dir(model_dir), device, options)
    }

    /// [`load_quantized`](Self::load_quantized) for model files on disk or in memory; `progress`
    /// sees each tensor as it is uploaded and can cancel.
    pub fn load_model_files(
        model: &ModelFiles,
        device: &Device,
        options: LoadOptions<'_>,
    ) -> Result<Self> {
        let config = Idefics2Config::from_model_files(model)?;
        config.validate(&model.path("config.json"))?;
        let files = WeightFiles::open_model(model)?;
        Self::load_weights(config, &files, device, options)
    }

    /// Checks a model directory's config and the names, shapes and dtypes of all its tensors
    /// without loading any weight.
    #[cfg(not(target_family = "wasm"))]
    pub fn check(model_dir: &Path) -> Result<CheckReport> {
        let config_path = model_dir.join("config.json");
        let config = Idefics2Config::from_file(&config_path)?;
        config.validate(&config_path)?;
        let files = WeightFiles::open(model_dir)?;
        let device = Device::flex();
        let (policy, stored) =
            Self::quant_policy(&config, QuantPolicy::NONE).map_err(|message| Error::Config {
                path: config_path.clone(),
                message,
            })?;
        let mut check =
            TensorLoader::new(&files, &device, DType::F32, true).with_quant(policy, stored.clone());
        Self::build(&config, &mut check, &device, DType::F32);
        let quantized_layers = check.quantized_layers().len();
        check.finish()?;
        let quantization = match (&stored, policy.format) {
            (StoredQuant::Awq(layout), _) => format!(
                "AWQ, 4 bits in groups of {} ({quantized_layers} linear layers)",
                layout.group
            ),
            (StoredQuant::Packed, Some(_)) => format!(
                "{}, written by idefics2 quantize ({quantized_layers} linear layers)",
                policy.label()
            ),
            _ => "none (float weights)".into(),
        };
        Ok(CheckReport {
            tensors: files.names().count(),
            stored_bytes: files.stored_bytes(),
            quantization,
        })
    }

    /// Builds the model from mapped weights: a check pass that lists every missing, unexpected
    /// or misshapen tensor, then the real load.
    pub fn from_files(
        config: Idefics2Config,
        files: &WeightFiles,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::from_files_quantized(config, files, device, dtype, QuantPolicy::NONE)
    }

    /// [`from_files`](Self::from_files) with a quantization policy (see
    /// [`load_quantized`](Self::load_quantized)).
    pub fn from_files_quantized(
        config: Idefics2Config,
        files: &WeightFiles,
        device: &Device,
        dtype: DType,
        quant: QuantPolicy,
    ) -> Result<Self> {
        Self::load_weights(config, files, device, LoadOptions::new(dtype, quant))
    }

    fn load_weights(
        config: Idefics2Config,
        files: &WeightFiles,
        device: &Device,
        options: LoadOptions<'_>,
    ) -> Result<Self> {
        let LoadOptions {
            dtype,
            quant,
            progress,
        } = options;
        let (dtype, half) = Self::storage(device, dtype)?;
        let (policy, stored) = Self::quant_policy(&config, quant).map_err(Error::QuantConfig)?;
        let mut check = TensorLoader::new(files, device, dtype, true)
            .with_quant(policy, stored.clone())
            .with_half_linears(half);
        Self::build(&config, &mut check, device, dtype);
        check.finish()?;
        let mut loader = TensorLoader::new(files, device, dtype, false)
            .with_quant(policy, stored)
            .with_half_linears(half);
        if let Some(progress) = progress {
            loader = loader.with_progress(progress);
        }
        let model = Self::build(&config, &mut loader, device, dtype);
        loader.finish()?;
        Ok(model)
    }

    /// The policy to load with, and how the checkpoint stores its layers.
    fn quant_policy(
        config: &Idefics2Config,
        asked: QuantPolicy,
    ) -> std::result::Result<(QuantPolicy, StoredQuant), String> {
        let Some(saved) = &config.quantization_config else {
            return Ok((asked, StoredQuant::Float));
        };
        let (policy, stored) = saved.stored()?;
        if let (StoredQuant::Awq(layout), Some(_)) = (&stored, asked.format) {
            return Err(format!(
                "the checkpoint is already quantized with AWQ (4 bits, groups of {}); load it \
                 without asking for {}",
                layout.group,
                asked.label()
            ));
        }
        if asked.format.is_some() && asked != policy {
            return Err(format!(
                "the checkpoint is already quantized as {}; load it without asking for {}",
                policy.label(),
                asked.label()
            ));
        }
        Ok((policy, stored))
    }

    /// What asking for `dtype` on `device` means: the float type the model computes in, and the
    /// half dtype its linear weights stay in, if any. F32, and F16 where the device has it, run
    /// as themselves on a GPU. On the CPU device F16 and BF16 mean f32 arithmetic over linear
    /// weights kept in f16 or bf16 in host memory (half the memory of f32; burn's CPU device
    /// computes in f16 only slowly and not in bf16).
    pub(crate) fn storage(device: &Device, dtype: DType) -> Result<(DType, Option<DType>)> {
        #[cfg(not(target_family = "wasm"))]
        if matches!(dtype, DType::F16 | DType::BF16)
            && idefics2_kernels::cpu_quant_matmul::is_cpu_device(device)
        {
            return Ok((DType::F32, Some(dtype)));
        }
        if !matches!(dtype, DType::F32 | DType::F16) {
            return Err(Error::Device(format!(
                "unsupported float type {dtype:?}: use F32 or F16 (BF16 on the CPU device only)"
            )));
        }
        if !device.supports_dtype(dtype) {
            return Err(Error::Device(format!(
                "{device:?} does not support {dtype:?}"
            )));
        }
        Ok((dtype, None))
    }

    pub(crate) fn build(
        config: &Idefics2Config,
        loader: &mut TensorLoader,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let text = &config.text_config;
        let model = Idefics2Inner {
            vision_model: VisionModel::load(loader, "model.vision_model", &config.vision_config),
            connector: Connector::load(loader, "model.connector", config),
            text_model: TextModel::load(loader, "model.text_model", text),
        };
        let lm_head = if config.tie_word_embeddings && !loader.contains("lm_head.weight") {
            Linear {
                weight: Linear::float_weight(model.text_model.embed_tokens.clone()),
                bias: None,
                kind: "lm_head",
            }
        } else {
            Linear::load(loader, "lm_head", text.hidden_size, text.vocab_size, false)
        };
        Self {
            config: config.clone(),
            model,
            lm_head,
            weight_bytes: loader.uploaded_bytes(),
            device: device.clone(),
            dtype,
            half_linears: loader.half_linears(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The float type of activations (and of weights, but see [`weight_dtype`](Self::weight_dtype)).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The float type of the float linear weights: [`dtype`](Self::dtype), or F16/BF16 when the
    /// CPU device keeps them in half precision.
    pub fn weight_dtype(&self) -> DType {
        self.half_linears.unwrap_or(self.dtype)
    }

    /// Image tokens each image becomes.
    pub fn image_seq_len(&self) -> usize {
        self.config.perceiver_config.resampler_n_latents
    }

    /// Host-side vision input (padding images dropped); `None` without real images.
    pub fn vision_input(&self, pixels: &PixelBatch) -> Result<Option<VisionInput>> {
        let v = &self.config.vision_config;
        if pixels.shape[2] != v.num_channels {
            return Err(Error::InputShape {
                what: "pixel_values channels".into(),
                expected: vec![v.num_channels],
                got: vec![pixels.shape[2]],
            });
        }
        vision_input::prepare(pixels, v.patch_size, v.image_size / v.patch_size)
    }

    /// The vision encoder's last hidden state.
    ///
    /// # Shapes
    /// returns `[images, patches, vision_hidden]`
    pub fn vision_hidden(&self, input: &VisionInput) -> Tensor<3> {
        let (n, p) = (input.images, input.num_patches());
        let patches = self.float_tensor(input.patches.clone(), [n, p, input.patch_dim]);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(input.position_ids.clone(), [n, p]),
            &self.device,
        );
        let mask = AttentionMask::key_padding(&input.patch_mask, n, p, &self.device);
        self.model.vision_model.forward(patches, ids, &mask)
    }

    /// The connector's output for the encoder's output.
    ///
    /// # Shapes
    /// `vision_hidden`: `[images, patches, vision_hidden]` -> `[images, n_latents, text_hidden]`
    pub fn connector_out(&self, input: &VisionInput, vision_hidden: Tensor<3>) -> Tensor<3> {
        let (n, p, l) = (input.images, input.num_patches(), self.image_seq_len());
        let valid: Vec<bool> = input
            .patch_mask
            .chunks(p)
            .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(true, l)))
            .collect();
        let mask = AttentionMask::key_padding(&valid, n, p + l, &self.device);
        self.model.connector.forward(vision_hidden, &mask)
    }

    /// Image features for all real images of a batch, in row-major (batch, image) order.
    ///
    /// # Shapes
    /// returns `[images, n_latents, text_hidden]`
    pub fn image_features(&self, pixels: &PixelBatch) -> Result<Option<Tensor<3>>> {
        Ok(self.vision_input(pixels)?.map(|input| {
            let hidden = self.vision_hidden(&input);
            self.connector_out(&input, hidden)
        }))
    }

    /// Token embeddings with the `<image>` positions replaced by image features in order.
    ///
    /// # Shapes
    /// `features`: `[images, n_latents, hidden]` -> `[batch, seq, hidden]`
    pub fn inputs_embeds(
        &self,
        input: &ModelInput,
        features: Option<Tensor<3>>,
    ) -> Result<Tensor<3>> {
        input.validate()?;
        let (batch, seq) = (input.batch, input.seq);
        let vocab = self.config.text_config.vocab_size;
        if let Some(&bad) = input.input_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::InputShape {
                what: format!("token id {bad} is outside the vocabulary"),
                expected: vec![vocab],
                got: vec![bad as usize],
            });
        }
        let text = self.model.text_model.embed(&input.input_ids, batch, seq);
        let image_token = self.config.image_token_id;
        let tokens = input
            .input_ids
            .iter()
            .filter(|&&id| id == image_token)
            .count();
        let (images, per_image) = features.as_ref().map_or((0, self.image_seq_len()), |f| {
            let [n, l, _] = f.dims();
            (n, l)
        });
        if tokens != images * per_image {
            return Err(Error::ImageTokenCount {
                tokens,
                features: images * per_image,
                images,
                per_image,
            });
        }
        let Some(features) = features else {
            return Ok(text);
        };
        let hidden = self.config.text_config.hidden_size;
        // One gather over [text rows ; feature rows]: image positions read the next feature row.
        let mut next_feature = batch * seq;
        let index: Vec<i64> = input
            .input_ids
            .iter()
            .enumerate()
            .map(|(p, &id)| {
                if id == image_token {
                    next_feature += 1;
                    (next_feature - 1) as i64
                } else {
                    p as i64
                }
            })
            .collect();
        let rows = Tensor::cat(
            vec![
                text.reshape([batch * seq, hidden]),
                features.reshape([tokens, hidden]),
            ],
            0,
        ); // [batch*seq + tokens, hidden]
        let index =
            Tensor::<1, Int>::from_data(TensorData::new(index, [batch * seq]), &self.device);
        Ok(rows.select(0, index).reshape([batch, seq, hidden]))
    }

    /// A fresh KV cache for `batch` rows of at most `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let limit = self.config.text_config.max_position_embeddings;
        if capacity > limit {
            return Err(Error::TooManyTokens {
                tokens: capacity,
                limit,
                what: "max_position_embeddings".into(),
            });
        }
        Ok(KvCache::new(
            &self.config.text_config,
            batch,
            capacity,
            &self.device,
            self.dtype,
        ))
    }

    /// Runs the decoder over new positions.
    ///
    /// # Shapes
    /// - `embeds`: `[batch, seq, hidden]`; `attention_mask`: `[batch, cache.len() + seq]`;
    ///   `positions`: `[batch * seq]`
    /// - returns `[batch, seq, hidden]`
    pub fn decode(
        &self,
        embeds: Tensor<3>,
        attention_mask: &[u8],
        positions: &[i64],
        cache: &mut KvCache,
    ) -> Result<Tensor<3>> {
        let [batch, seq, _] = embeds.dims();
        let keys = cache.len() + seq;
        if attention_mask.len() != batch * keys || positions.len() != batch * seq {
            return Err(Error::InputShape {
                what: "attention_mask / positions".into(),
                expected: vec![batch * keys, batch * seq],
                got: vec![attention_mask.len(), positions.len()],
            });
        }
        cache.reserve(seq)?;
        let mask = decoder_mask(
            attention_mask,
            batch,
            self.config.text_config.sliding_window,
            &self.device,
        );
        Ok(self
            .model
            .text_model
            .forward(embeds, positions, &mask, cache))
    }

    /// # Shapes
    /// `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.lm_head.forward(hidden)
    }

    fn float_tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::<D>::from_data(TensorData::new(values, shape), &self.device).cast(self.dtype)
    }
}
