//! Small building blocks shared by the three parts of the model: linear layers, LayerNorm,
//! RMSNorm (both reduced in f32 whatever the runtime float type), SwiGLU MLPs and activations.

use super::row_chunks::RowChunks;
use burn::tensor::activation::{gelu, gelu_approximate, silu};
use burn::tensor::{DType, Tensor};

use idefics2_kernels::{BlockedFloatWeight, WgpuCaps, quant_matmul, uses_float_gemv};

#[cfg(not(target_family = "wasm"))]
use idefics2_kernels::cpu_half_matmul::{HalfWeight, cpu_half_matmul};

use crate::config::Activation;
use crate::profile;
use crate::quant::QuantizedWeight;
use crate::weights::TensorLoader;

/// The weight of a linear layer: float `[out, in]` as on the hub, or quantized.
// A few hundred of these exist per model; boxing either variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LinearWeight {
    Float(Tensor<2>),
    /// A float weight larger than one storage binding, in row blocks.
    Chunked(RowChunks),
    /// An f32 weight on a CPU adapter (lavapipe), in the layout of the float GEMV kernel.
    Blocked(BlockedFloatWeight),
    Quantized(QuantizedWeight),
    /// An f16 or bf16 weight in host memory, for the CPU device.
    #[cfg(not(target_family = "wasm"))]
    Half(HalfWeight),
}

/// `nn.Linear`: weight `[out, in]`, optional bias `[out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Tensor<1>>,
    /// What the profile counts its time as ([`linear_kind`]).
    pub kind: &'static str,
}

/// The profile's name for linear layer `prefix`.
pub fn linear_kind(prefix: &str) -> &'static str {
    let last = prefix.rsplit('.').next().unwrap_or(prefix);
    if prefix == "lm_head" {
        "lm_head"
    } else if prefix.contains("vision_model") {
        "vision linear"
    } else if prefix.contains("connector") {
        "connector linear"
    } else {
        match last {
            "q_proj" | "k_proj" | "v_proj" => "text linear q/k/v",
            "o_proj" => "text linear o",
            "gate_proj" | "up_proj" => "text linear gate/up",
            "down_proj" => "text linear down",
            _ => "other linear",
        }
    }
}

impl Linear {
    pub fn load(
        loader: &mut TensorLoader,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Self {
        let weight = if loader.quantizes(prefix) {
            match loader.quantized(prefix, out_features, in_features) {
                Some(weight) => LinearWeight::Quantized(weight),
                None => LinearWeight::Float(loader.placeholder()),
            }
        } else if loader.half_linears().is_some() {
            Self::half_weight(loader, prefix, out_features, in_features)
        } else {
            Self::float_weight(
                loader.float_rows(&format!("{prefix}.weight"), [out_features, in_features]),
            )
        };
        let bias = bias.then(|| loader.float(&format!("{prefix}.bias"), [out_features]));
        Self {
            weight,
            bias,
            kind: linear_kind(prefix),
        }
    }

    /// The weight of `prefix` in the loader's half dtype (a placeholder when it cannot be read).
    fn half_weight(
        loader: &mut TensorLoader,
        prefix: &str,
        out_features: usize,
        in_features: usize,
    ) -> LinearWeight {
        #[cfg(not(target_family = "wasm"))]
        if let Some(weight) =
            loader.half_weight(&format!("{prefix}.weight"), out_features, in_features)
        {
            return LinearWeight::Half(weight);
        }
        let _ = (prefix, out_features, in_features);
        LinearWeight::Float(loader.placeholder())
    }

    /// A float weight: on CPU adapters in f32 the float GEMV's layout, elsewhere one tensor when
    /// it fits a binding, else its row blocks.
    pub fn float_weight(rows: RowChunks) -> LinearWeight {
        if let Some(first) = rows.chunks.first() {
            let device = first.device();
            if first.dtype() == DType::F32 && uses_float_gemv(&device) {
                let max_binding = WgpuCaps::of(&device).map_or(u64::MAX, |c| c.max_binding_bytes);
                return LinearWeight::Blocked(BlockedFloatWeight::from_rows(
                    &rows.chunks,
                    max_binding,
                ));
            }
        }
        match rows.as_single() {
            Some(one) => LinearWeight::Float(one.clone()),
            None => LinearWeight::Chunked(rows),
        }
    }

    pub fn float(weight: Tensor<2>, bias: Option<Tensor<1>>, kind: &'static str) -> Self {
        Self {
            weight: Self::float_weight(RowChunks::single(weight)),
            bias,
            kind,
        }
    }

    /// # Shapes
    /// `[batch, seq, in]` -> `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let _profile = profile::scope(self.kind, || x.device());
        let [batch, seq, in_features] = x.dims();
        let y = match &self.weight {
            LinearWeight::Float(weight) => x
                .reshape([batch * seq, in_features])
                .matmul(weight.clone().transpose()), // [batch*seq, out]
            LinearWeight::Chunked(rows) => {
                rows.matmul_transposed(x.reshape([batch * seq, in_features]))
            }
            LinearWeight::Blocked(weight) => weight.matmul(x.reshape([batch * seq, in_features])),
            LinearWeight::Quantized(weight) => {
                quant_matmul(x.reshape([batch * seq, in_features]), weight)
            }
            #[cfg(not(target_family = "wasm"))]
            LinearWeight::Half(weight) => {
                cpu_half_matmul(x.reshape([batch * seq, in_features]), weight)
            }
        };
        let out_features = y.dims()[1];
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([batch, seq, out_features])
    }
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(loader: &mut TensorLoader, prefix: &str, size: usize, eps: f64) -> Self {
        Self {
            weight: loader.float(&format!("{prefix}.weight"), [size]),
            bias: loader.float(&format!("{prefix}.bias"), [size]),
            eps,
        }
    }

    /// # Shapes
    /// `[batch, seq, hidden]` -> same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let _profile = profile::scope("norms", || x.device());
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean = x.clone().mean_dim(2);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(2);
        let normed = centered / (var + self.eps).sqrt();
        let normed = normed.cast(dtype);
        normed * self.weight.clone().unsqueeze::<3>() + self.bias.clone().unsqueeze::<3>()
    }
}

/// `Idefics2RMSNorm` / `MistralRMSNorm`: normalises in f32, casts back, then scales.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor<1>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(loader: &mut TensorLoader, prefix: &str, size: usize, eps: f64) -> Self {
        Self {
            weight: loader.float(&format!("{prefix}.weight"), [size]),
            eps,
        }
    }

    /// # Shapes
    /// `[batch, seq, hidden]` -> same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let _profile = profile::scope("norms", || x.device());
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let variance = x.clone().square().mean_dim(2);
        let normed = (x * (variance + self.eps).sqrt().recip()).cast(dtype);
        normed * self.weight.clone().unsqueeze::<3>()
    }
}

pub fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        Activation::Silu => silu(x),
        Activation::Gelu => gelu(x),
        Activation::GeluPytorchTanh | Activation::GeluNew => gelu_approximate(x),
    }
}

/// SwiGLU MLP without biases (`Idefics2MLP`, `MistralMLP`): `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub act: Activation,
}

impl GatedMlp {
    pub fn load(
        loader: &mut TensorLoader,
        prefix: &str,
        hidden_size: usize,
        intermediate_size: usize,
        output_size: usize,
        act: Activation,
    ) -> Self {
        Self {
            gate_proj: Linear::load(
                loader,
                &format!("{prefix}.gate_proj"),
                hidden_size,
                intermediate_size,
                false,
            ),
            up_proj: Linear::load(
                loader,
                &format!("{prefix}.up_proj"),
                hidden_size,
                intermediate_size,
                false,
            ),
            down_proj: Linear::load(
                loader,
                &format!("{prefix}.down_proj"),
                intermediate_size,
                output_size,
                false,
            ),
            act,
        }
    }

    /// # Shapes
    /// `[batch, seq, hidden]` -> `[batch, seq, output]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        let hidden = {
            let _profile = profile::scope("activations", || gate.device());
            activate(self.act, gate) * up
        };
        self.down_proj.forward(hidden)
    }
}
