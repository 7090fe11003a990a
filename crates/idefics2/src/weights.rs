//! Checkpoint loading in the hub layout: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, tensors stored as f32, f16 or bf16 and converted at load to the
//! runtime float type. Files are memory-mapped and each tensor is converted and uploaded on its
//! own, so the host never holds a second full copy of the weights.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{Error, Result, ShapeMismatch};

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
    maps: Vec<(PathBuf, Mmap)>,
    entries: BTreeMap<String, Entry>,
}

impl WeightFiles {
    /// Opens `model.safetensors.index.json` and its shards, else `model.safetensors`.
    pub fn open(model_dir: &Path) -> Result<Self> {
        let index_path = model_dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = crate::config::read_to_string(&index_path)?;
            let index: ShardIndex = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: index_path.clone(),
                source,
            })?;
            let shards: BTreeSet<&String> = index.weight_map.values().collect();
            shards
                .into_iter()
                .map(|name| model_dir.join(name))
                .collect()
        } else {
            vec![model_dir.join("model.safetensors")]
        };
        Self::open_files(&files)
    }

    /// Maps the given safetensors files; a tensor name may appear in only one of them.
    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        let mut entries = BTreeMap::new();
        for (file_index, path) in files.iter().enumerate() {
            let io_error = |source| Error::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io_error)?;
            // SAFETY: the map is read-only; a checkpoint rewritten while we read it is the
            // user's race, as with every mmap-based loader.
            #[allow(unsafe_code)]
            let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
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
            maps.push((path.clone(), map));
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

    /// Total bytes of tensor data as stored.
    pub fn stored_bytes(&self) -> usize {
        self.entries.values().map(|e| e.end - e.start).sum()
    }

    /// Converts one stored tensor to `dtype` (F32 or F16) on the host.
    fn read(&self, name: &str, entry: &Entry, dtype: DType) -> Result<TensorData> {
        let bytes = &self.maps[entry.file].1[entry.start..entry.end];
        let values = decode_f32(name, entry.dtype, bytes)?;
        let shape = entry.shape.clone();
        Ok(match dtype {
            DType::F16 => TensorData::new(
                values
                    .into_iter()
                    .map(half::f16::from_f32)
                    .collect::<Vec<_>>(),
                shape,
            ),
            _ => TensorData::new(values, shape),
        })
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

/// Hands out the model's tensors by hub name, checking each shape.
///
/// In check mode it uploads nothing (it returns 1-element placeholders) and only records what is
/// missing or misshapen, so a wrong checkpoint fails with one error listing every problem before
/// any real allocation.
pub struct TensorLoader<'a> {
    files: &'a WeightFiles,
    device: Device,
    dtype: DType,
    check_only: bool,
    used: BTreeSet<String>,
    missing: Vec<String>,
    mismatched: Vec<ShapeMismatch>,
    failure: Option<Error>,
}

impl<'a> TensorLoader<'a> {
    pub fn new(files: &'a WeightFiles, device: &Device, dtype: DType, check_only: bool) -> Self {
        Self {
            files,
            device: device.clone(),
            dtype,
            check_only,
            used: BTreeSet::new(),
            missing: Vec::new(),
            mismatched: Vec::new(),
            failure: None,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        self.files.contains(name)
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
        let placeholder = || Tensor::zeros([1; D], (&self.device, self.dtype));
        self.used.insert(name.to_string());
        let Some(entry) = self.files.entries.get(name) else {
            self.missing.push(name.to_string());
            return placeholder();
        };
        if entry.shape != stored {
            self.mismatched.push(ShapeMismatch {
                name: name.to_string(),
                expected: stored.to_vec(),
                found: entry.shape.clone(),
            });
            return placeholder();
        }
        if !matches!(entry.dtype, StDtype::F32 | StDtype::F16 | StDtype::BF16) {
            self.failure.get_or_insert(Error::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{:?}", entry.dtype),
            });
        }
        if self.check_only || self.failure.is_some() {
            return placeholder();
        }
        match self.files.read(name, entry, self.dtype) {
            Ok(data) => Tensor::<S>::from_data(data, (&self.device, self.dtype)).reshape(shape),
            Err(e) => {
                self.failure = Some(e);
                placeholder()
            }
        }
    }

    /// Ends loading: an error naming every missing, unexpected and misshapen tensor, if any.
    pub fn finish(self) -> Result<()> {
        if let Some(e) = self.failure {
            return Err(e);
        }
        let unexpected: Vec<String> = self
            .files
            .names()
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
