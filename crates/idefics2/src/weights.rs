//! Checkpoint loading in the hub layout: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, tensors stored as f32, f16 or bf16 and converted at load to the
//! runtime float type. Files are memory-mapped and each tensor is converted and uploaded on its
//! own, so the host never holds a second full copy of the weights.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{Error, Result, ShapeMismatch};
use crate::model::row_chunks::RowChunks;
use crate::model_files::{FileBytes, ModelFiles, map_file};
use crate::quant::{
    PackedWeight, QuantFormat, QuantPolicy, QuantizedWeight, StoredQuant, packed_names,
};

/// Where one tensor lives inside the mapped files.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    /// Byte range inside the file.
    start: usize,
    end: usize,
}

/// The memory-mapped safetensors files of one checkpoint and the index of their tensors.
pub struct WeightFiles {
    maps: Vec<(PathBuf, FileBytes)>,
    entries: BTreeMap<String, Entry>,
}

impl WeightFiles {
    /// Opens `model.safetensors.index.json` and its shards, else `model.safetensors`.
    pub fn open(model_dir: &Path) -> Result<Self> {
        Self::open_model(&ModelFiles::dir(model_dir))
    }

    /// [`open`](Self::open) for model files on disk or in memory.
    pub fn open_model(model: &ModelFiles) -> Result<Self> {
        let index_name = "model.safetensors.index.json";
        let io_error = |name: &str| {
            let path = model.path(name);
            move |source| Error::Io { path, source }
        };
        let names: Vec<String> = match model.read_text(index_name).map_err(io_error(index_name))? {
            Some(text) => {
                let index: ShardIndex =
                    serde_json::from_str(&text).map_err(|source| Error::Json {
                        path: model.path(index_name),
                        source,
                    })?;
                let shards: BTreeSet<String> = index.weight_map.into_values().collect();
                shards.into_iter().collect()
            }
            None => vec!["model.safetensors".to_owned()],
        };
        let buffers = names
            .iter()
            .map(|name| Ok((model.path(name), model.map(name).map_err(io_error(name))?)))
            .collect::<Result<Vec<_>>>()?;
        Self::from_buffers(buffers)
    }

    /// Maps the given safetensors files; a tensor name may appear in only one of them.
    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let buffers = files
            .iter()
            .map(|path| {
                let map = map_file(path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                Ok((path.clone(), map))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_buffers(buffers)
    }

    fn from_buffers(buffers: Vec<(PathBuf, FileBytes)>) -> Result<Self> {
        let mut maps = Vec::with_capacity(buffers.len());
        let mut entries = BTreeMap::new();
        for (file_index, (path, map)) in buffers.into_iter().enumerate() {
            let tensors = SafeTensors::deserialize(&map).map_err(|e| Error::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let base = map.as_ptr() as usize;
            for (name, view) in tensors.tensors() {
                let data = view.data();
                let start = data.as_ptr() as usize - base;
                let entry = Entry {
                    file: file_index,
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start,
                    end: start + data.len(),
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` appears in more than one file"),
                    });
                }
            }
            maps.push((path, map));
        }
        Ok(Self { maps, entries })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The stored dtype of `name`.
    pub fn dtype(&self, name: &str) -> Option<StDtype> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// The stored bytes of `name`, as in the file.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let e = self.entries.get(name)?;
        Some(&self.maps[e.file].1[e.start..e.end])
    }

    /// `name` decoded to f32 values (from F32, F16 or BF16).
    pub fn f32_values(&self, name: &str) -> Result<Vec<f32>> {
        let (Some(dtype), Some(bytes)) = (self.dtype(name), self.bytes(name)) else {
            return Err(Error::Weights {
                missing: vec![name.to_string()],
                unexpected: Vec::new(),
                mismatched: Vec::new(),
            });
        };
        decode_f32(name, dtype, bytes)
    }

    /// Total bytes of tensor data as stored.
    pub fn stored_bytes(&self) -> usize {
        self.entries.values().map(|e| e.end - e.start).sum()
    }
}

/// f32 values as host data of the runtime float type (F32, or F16 converted here).
fn host_data(values: Vec<f32>, shape: Vec<usize>, dtype: DType) -> TensorData {
    match dtype {
        DType::F16 => TensorData::new(
            values
                .into_iter()
                .map(half::f16::from_f32)
                .collect::<Vec<_>>(),
            shape,
        ),
        _ => TensorData::new(values, shape),
    }
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

fn decode_f32(name: &str, dtype: StDtype, bytes: &[u8]) -> Result<Vec<f32>> {
    let two = |f: fn([u8; 2]) -> f32| bytes.chunks_exact(2).map(|c| f([c[0], c[1]])).collect();
    Ok(match dtype {
        StDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDtype::F16 => two(|b| half::f16::from_le_bytes(b).to_f32()),
        StDtype::BF16 => two(|b| half::bf16::from_le_bytes(b).to_f32()),
        other => {
            return Err(Error::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

/// How far a load has come: reported as each stored tensor is read for upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadProgress {
    pub tensors: usize,
    pub total_tensors: usize,
    pub bytes: usize,
    pub total_bytes: usize,
}

/// Sees each [`LoadProgress`]; `Break` cancels the load (it ends with [`Error::Cancelled`]).
pub type ProgressFn<'a> = Box<dyn FnMut(LoadProgress) -> ControlFlow<()> + 'a>;

/// How to load a model: float type, quantization, and who sees the progress.
pub struct LoadOptions<'a> {
    pub dtype: DType,
    pub quant: QuantPolicy,
    pub progress: Option<ProgressFn<'a>>,
}

impl LoadOptions<'_> {
    pub fn new(dtype: DType, quant: QuantPolicy) -> Self {
        Self {
            dtype,
            quant,
            progress: None,
        }
    }
}

/// Hands out the model's tensors by hub name, checking each shape.
///
/// In check mode it uploads nothing (it returns 1-element placeholders) and only records what is
/// missing or misshapen, so a wrong checkpoint fails with one error listing every problem before
/// any real allocation. Without files ([`TensorLoader::synthetic`]) it makes every tensor it is
/// asked for from a seeded generator: random weights of any shape, for benchmarks.
pub struct TensorLoader<'a> {
    files: Option<&'a WeightFiles>,
    seed: u64,
    device: Device,
    dtype: DType,
    check_only: bool,
    used: BTreeSet<String>,
    missing: Vec<String>,
    mismatched: Vec<ShapeMismatch>,
    failure: Option<Error>,
    uploaded_bytes: usize,
    quant: QuantPolicy,
    /// How the checkpoint stores the layers the policy quantizes.
    stored: StoredQuant,
    /// Every linear layer the policy quantizes: (prefix, n_out, k_in, format).
    quantized_layers: Vec<(String, usize, usize, QuantFormat)>,
    progress: Option<ProgressFn<'a>>,
    done: LoadProgress,
    /// The device's largest storage binding: bigger float matrices are uploaded in row blocks.
    max_binding_bytes: u64,
    /// On the CPU device: float linear weights are kept in this half dtype (F16 or BF16).
    half_linears: Option<DType>,
}

impl<'a> TensorLoader<'a> {
    pub fn new(files: &'a WeightFiles, device: &Device, dtype: DType, check_only: bool) -> Self {
        Self::with_source(Some(files), 0, device, dtype, check_only)
    }

    /// A loader that makes random weights (see [`synthetic_values`]) instead of reading files.
    pub fn synthetic(device: &Device, dtype: DType, seed: u64) -> Self {
        Self::with_source(None, seed, device, dtype, false)
    }

    fn with_source(
        files: Option<&'a WeightFiles>,
        seed: u64,
        device: &Device,
        dtype: DType,
        check_only: bool,
    ) -> Self {
        Self {
            files,
            seed,
            device: device.clone(),
            dtype,
            check_only,
            used: BTreeSet::new(),
            missing: Vec::new(),
            mismatched: Vec::new(),
            failure: None,
            uploaded_bytes: 0,
            quant: QuantPolicy::NONE,
            stored: StoredQuant::Float,
            quantized_layers: Vec::new(),
            progress: None,
            max_binding_bytes: max_binding_bytes(device),
            half_linears: None,
            done: LoadProgress {
                total_tensors: files.map_or(0, |f| f.entries.len()),
                total_bytes: files.map_or(0, WeightFiles::stored_bytes),
                ..LoadProgress::default()
            },
        }
    }

    /// Reports progress to `progress` (real loads only, not the check pass).
    pub fn with_progress(mut self, progress: ProgressFn<'a>) -> Self {
        self.progress = Some(progress);
        self
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Quantize linear layers as `policy` says: from float tensors at load
    /// ([`StoredQuant::Float`]), or read the packed tensors the checkpoint holds.
    pub fn with_quant(mut self, policy: QuantPolicy, stored: StoredQuant) -> Self {
        self.quant = policy;
        self.stored = stored;
        self
    }

    /// Keep float linear weights in `half` (F16 or BF16) in host memory (the CPU device), the
    /// rest in the loader's float type.
    pub fn with_half_linears(mut self, half: Option<DType>) -> Self {
        self.half_linears = half;
        self
    }

    /// The half dtype float linear weights are kept in, if any.
    pub fn half_linears(&self) -> Option<DType> {
        self.half_linears
    }

    /// The float weight `name` (`[n_out, k_in]`) rounded to [`half_linears`](Self::half_linears)
    /// in host memory; `None` when it could not be read (in check mode, or with the problem
    /// recorded).
    #[cfg(not(target_family = "wasm"))]
    pub fn half_weight(
        &mut self,
        name: &str,
        n_out: usize,
        k_in: usize,
    ) -> Option<idefics2_kernels::cpu_half_matmul::HalfWeight> {
        use idefics2_kernels::cpu_half_matmul::{HalfDtype, HalfWeight};
        let dtype = self.half_linears.and_then(HalfDtype::of)?;
        let stored = match dtype {
            HalfDtype::F16 => StDtype::F16,
            HalfDtype::Bf16 => StDtype::BF16,
        };
        let weight = if self.files.and_then(|f| f.dtype(name)) == Some(stored) {
            // Stored in the dtype asked for: the bits as they are, no f32 copy.
            let (_, bytes) = self.entry(name, &[n_out, k_in], &[stored], "")?;
            let bits = bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            HalfWeight {
                dtype,
                n_out,
                k_in,
                bits,
            }
        } else {
            let values = self.host_values(name, &[n_out, k_in])?;
            HalfWeight::from_f32(&values, n_out, k_in, dtype)
        };
        self.uploaded_bytes += weight.bytes();
        Some(weight)
    }

    /// The linear layers quantized so far: (prefix, n_out, k_in, format).
    pub fn quantized_layers(&self) -> &[(String, usize, usize, QuantFormat)] {
        &self.quantized_layers
    }

    /// Bytes of weights uploaded to the device so far.
    pub fn uploaded_bytes(&self) -> usize {
        self.uploaded_bytes
    }

    /// Whether the checkpoint holds `name` (a synthetic one holds only what the model asks for).
    pub fn contains(&self, name: &str) -> bool {
        self.files.is_some_and(|files| files.contains(name))
    }

    /// The float tensor `name`, which must have `shape`.
    pub fn float<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Tensor<D> {
        self.float_as(name, shape, shape)
    }

    /// The float tensor `name`, stored with shape `stored`, viewed as `shape` (same element count).
    pub fn float_as<const S: usize, const D: usize>(
        &mut self,
        name: &str,
        stored: [usize; S],
        shape: [usize; D],
    ) -> Tensor<D> {
        let Some(values) = self.host_values(name, &stored) else {
            return self.placeholder();
        };
        self.uploaded_bytes += values.len() * self.dtype.size();
        let data = host_data(values, stored.to_vec(), self.dtype);
        Tensor::<S>::from_data(data, (&self.device, self.dtype)).reshape(shape)
    }

    /// The float matrix `name` (`[rows, cols]`) as one tensor when it fits one storage binding of
    /// the device, else in row blocks that do.
    pub fn float_rows(&mut self, name: &str, shape: [usize; 2]) -> RowChunks {
        let [rows, cols] = shape;
        let bytes = (rows * cols * self.dtype.size()) as u64;
        if bytes <= self.max_binding_bytes {
            return RowChunks::single(self.float(name, shape));
        }
        let Some(values) = self.host_values(name, &shape) else {
            return RowChunks::single(self.placeholder());
        };
        self.uploaded_bytes += values.len() * self.dtype.size();
        let rows_per_chunk =
            RowChunks::rows_per_chunk(cols, self.dtype.size(), self.max_binding_bytes);
        let chunks = values
            .chunks(rows_per_chunk * cols)
            .map(|part| {
                let data = host_data(part.to_vec(), vec![part.len() / cols, cols], self.dtype);
                Tensor::<2>::from_data(data, (&self.device, self.dtype))
            })
            .collect();
        RowChunks::new(chunks, rows_per_chunk)
    }

    /// Whether the policy quantizes linear layer `prefix` (for an AWQ checkpoint: whether it is
    /// stored quantized).
    pub fn quantizes(&self, prefix: &str) -> bool {
        self.format_for(prefix).is_some()
    }

    fn format_for(&self, prefix: &str) -> Option<QuantFormat> {
        match &self.stored {
            StoredQuant::Awq(layout) => layout.quantizes(prefix).then(|| layout.format()),
            _ => self.quant.format_for(prefix),
        }
    }

    /// A 1-element stand-in for a tensor that could not be loaded (the error is recorded).
    pub fn placeholder<const D: usize>(&self) -> Tensor<D> {
        Tensor::zeros([1; D], (&self.device, self.dtype))
    }

    /// The weight of linear layer `prefix` (`[n_out, k_in]`) quantized, when the policy
    /// quantizes that layer; `None` otherwise, or when it could not be read (in check mode, or
    /// with the problem recorded for [`finish`](Self::finish)).
    pub fn quantized(
        &mut self,
        prefix: &str,
        n_out: usize,
        k_in: usize,
    ) -> Option<QuantizedWeight> {
        let format = self.format_for(prefix)?;
        self.quantized_layers
            .push((prefix.to_string(), n_out, k_in, format));
        let packed = if let StoredQuant::Awq(layout) = &self.stored {
            let layout = layout.clone();
            self.read_awq(&layout, prefix, n_out, k_in)?
        } else if self.stored == StoredQuant::Packed {
            self.read_packed(prefix, n_out, k_in, format)?
        } else {
            let values = self.host_values(&format!("{prefix}.weight"), &[n_out, k_in])?;
            match idefics2_kernels::quantize(&values, n_out, k_in, format) {
                Ok(packed) => packed,
                Err(e) => {
                    self.failure.get_or_insert(Error::Quant {
                        name: prefix.to_string(),
                        message: e.to_string(),
                    });
                    return None;
                }
            }
        };
        match idefics2_kernels::upload_owned(packed, &self.device) {
            Ok(weight) => {
                self.uploaded_bytes += weight.device_bytes();
                Some(weight)
            }
            Err(e) => {
                self.failure.get_or_insert(Error::Quant {
                    name: prefix.to_string(),
                    message: e.to_string(),
                });
                None
            }
        }
    }

    /// The packed tensors of `prefix` as `idefics2 quantize` wrote them.
    fn read_packed(
        &mut self,
        prefix: &str,
        n_out: usize,
        k_in: usize,
        format: QuantFormat,
    ) -> Option<PackedWeight> {
        let [qweight, scales, qzeros] = packed_names(prefix);
        let groups = format.groups_per_row(k_in);
        let words = self.host_words(&qweight, &[n_out, format.words_per_row(k_in)]);
        let scales = self.host_values(&scales, &[n_out, groups]);
        let zeros = if format.has_zero_point() {
            let values = self.host_values(&qzeros, &[n_out, groups]);
            values.and_then(|values| self.zero_points(&qzeros, &values))
        } else {
            Some(Vec::new())
        };
        Some(PackedWeight {
            format,
            n_out,
            k_in,
            words: words?,
            scales: scales?,
            zeros: zeros?,
        })
    }

    /// The tensors of AWQ layer `prefix` (see [`crate::awq`]) in our layout.
    fn read_awq(
        &mut self,
        layout: &crate::awq::AwqLayout,
        prefix: &str,
        n_out: usize,
        k_in: usize,
    ) -> Option<PackedWeight> {
        if let Err(message) = layout.check_shape(n_out, k_in) {
            self.failure.get_or_insert(Error::Quant {
                name: prefix.to_string(),
                message,
            });
            return None;
        }
        let [qweight, scales, qzeros] = packed_names(prefix);
        let groups = k_in / layout.group;
        let words = self.host_words(&qweight, &[k_in, n_out / 8]);
        let zeros = self.host_words(&qzeros, &[groups, n_out / 8]);
        let scales = self.host_floats(
            &scales,
            &[groups, n_out],
            &[StDtype::F16],
            " (AWQ scales must be F16)",
        );
        Some(layout.to_packed(&words?, &zeros?, &scales?, n_out, k_in))
    }

    /// Looks `name` up and checks its shape and stored dtype (one of `dtypes`, else an error
    /// whose dtype text ends with `expected`), recording what is wrong; its stored dtype and
    /// bytes, or `None` when it cannot be read (or in check mode).
    fn entry(
        &mut self,
        name: &str,
        shape: &[usize],
        dtypes: &[StDtype],
        expected: &str,
    ) -> Option<(StDtype, &'a [u8])> {
        self.used.insert(name.to_string());
        let files = self.files?;
        let Some(entry) = files.entries.get(name) else {
            self.missing.push(name.to_string());
            return None;
        };
        if entry.shape != shape {
            self.mismatched.push(ShapeMismatch {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
            return None;
        }
        if !dtypes.contains(&entry.dtype) {
            self.failure.get_or_insert(Error::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{:?}{expected}", entry.dtype),
            });
        }
        if self.check_only || self.failure.is_some() {
            return None;
        }
        self.done.tensors += 1;
        self.done.bytes += entry.end - entry.start;
        if let Some(progress) = &mut self.progress
            && progress(self.done).is_break()
        {
            self.failure = Some(Error::Cancelled);
            return None;
        }
        Some((
            entry.dtype,
            &files.maps[entry.file].1[entry.start..entry.end],
        ))
    }

    /// A float tensor as f32 values on the host (synthetic ones are made here).
    fn host_values(&mut self, name: &str, shape: &[usize]) -> Option<Vec<f32>> {
        const FLOATS: [StDtype; 3] = [StDtype::F32, StDtype::F16, StDtype::BF16];
        self.host_floats(name, shape, &FLOATS, "")
    }

    /// [`host_values`](Self::host_values) stored in one of `dtypes` (see [`entry`](Self::entry)
    /// for `expected`).
    fn host_floats(
        &mut self,
        name: &str,
        shape: &[usize],
        dtypes: &[StDtype],
        expected: &str,
    ) -> Option<Vec<f32>> {
        if self.files.is_none() {
            self.used.insert(name.to_string());
            return Some(synthetic_values(name, shape.iter().product(), self.seed));
        }
        let (dtype, bytes) = self.entry(name, shape, dtypes, expected)?;
        match decode_f32(name, dtype, bytes) {
            Ok(values) => Some(values),
            Err(e) => {
                self.failure = Some(e);
                None
            }
        }
    }

    /// Zero points as bytes: each must be a whole number in 0..=15 (a 4-bit code).
    fn zero_points(&mut self, name: &str, values: &[f32]) -> Option<Vec<u8>> {
        let valid = |z: f32| z.fract() == 0.0 && (0.0..=15.0).contains(&z);
        if let Some((at, &bad)) = values.iter().enumerate().find(|(_, z)| !valid(**z)) {
            self.failure = Some(Error::Quant {
                name: name.to_string(),
                message: format!("zero point {bad} at {at} is not a whole number in 0..=15"),
            });
            return None;
        }
        Some(values.iter().map(|&z| z as u8).collect())
    }

    /// Packed words (stored as I32 or U32) on the host.
    fn host_words(&mut self, name: &str, shape: &[usize]) -> Option<Vec<u32>> {
        let (_, bytes) = self.entry(
            name,
            shape,
            &[StDtype::I32, StDtype::U32],
            " (packed words must be I32 or U32)",
        )?;
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    /// Ends loading: an error naming every missing, unexpected and misshapen tensor, if any.
    pub fn finish(self) -> Result<()> {
        if let Some(e) = self.failure {
            return Err(e);
        }
        let unexpected: Vec<String> = self
            .files
            .into_iter()
            .flat_map(|files| files.names())
            .filter(|name| !self.used.contains(*name))
            .map(str::to_string)
            .collect();
        if self.missing.is_empty() && unexpected.is_empty() && self.mismatched.is_empty() {
            Ok(())
        } else {
            Err(Error::Weights {
                missing: self.missing,
                unexpected,
                mismatched: self.mismatched,
            })
        }
    }
}

/// The largest storage binding of `device` in bytes (no limit on the CPU device).
/// `IDEFICS2_MAX_BINDING_BYTES` lowers it: for adapters that report more than they can allocate,
/// and for tests of the row-block path.
fn max_binding_bytes(device: &Device) -> u64 {
    let adapter = idefics2_kernels::WgpuCaps::of(device).map_or(u64::MAX, |c| c.max_binding_bytes);
    let asked = std::env::var("IDEFICS2_MAX_BINDING_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    asked.map_or(adapter, |asked| asked.min(adapter))
}

/// Random weights for tensor `name`: norm scales 1, biases 0, everything else uniform with
/// standard deviation 0.02 (transformers' `initializer_range`), from SplitMix64 seeded by the
/// seed and the name, so a tensor does not depend on the order it is asked for.
pub fn synthetic_values(name: &str, count: usize, seed: u64) -> Vec<f32> {
    let is_norm = name.contains("norm") && name.ends_with(".weight");
    if is_norm {
        return vec![1.0; count];
    }
    if name.ends_with(".bias") {
        return vec![0.0; count];
    }
    // FNV-1a of the name, mixed with the seed.
    let mut state = name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let half_width = 0.02 * 3f32.sqrt();
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            (2.0 * unit - 1.0) * half_width
        })
        .collect()
}
