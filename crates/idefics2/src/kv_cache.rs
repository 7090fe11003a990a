//! The decoder's key/value cache: one preallocated `[batch, kv_heads, capacity, head_dim]` pair
//! per layer, written in place at the current position (no per-token concatenation).

use burn::tensor::{DType, Device, Tensor};

use crate::config::TextConfig;
use crate::error::{Error, Result};

#[derive(Debug)]
struct LayerCache {
    k: Tensor<4>,
    v: Tensor<4>,
}

#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    batch: usize,
    capacity: usize,
    /// Positions already written (the same for every row: rows are left-padded).
    len: usize,
}

impl KvCache {
    pub fn new(
        config: &TextConfig,
        batch: usize,
        capacity: usize,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let shape = [
            batch,
            config.num_key_value_heads(),
            capacity,
            config.head_dim(),
        ];
        let layers = (0..config.num_hidden_layers)
            .map(|_| LayerCache {
                k: Tensor::zeros(shape, (device, dtype)),
                v: Tensor::zeros(shape, (device, dtype)),
            })
            .collect();
        Self {
            layers,
            batch,
            capacity,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Checks that `new_tokens` more positions fit.
    pub fn reserve(&self, new_tokens: usize) -> Result<()> {
        if self.len + new_tokens > self.capacity {
            return Err(Error::TooManyTokens {
                tokens: self.len + new_tokens,
                limit: self.capacity,
                what: "KV cache capacity".into(),
            });
        }
        Ok(())
    }

    /// Writes `k`, `v` of `layer` at positions `len..len+seq` and returns the keys and values of
    /// positions `0..len+seq`.
    ///
    /// # Shapes
    /// `k`, `v`: `[batch, kv_heads, seq, head_dim]` -> `[batch, kv_heads, len + seq, head_dim]`
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let _profile = crate::profile::scope("kv cache writes", || k.device());
        let [batch, kv_heads, seq, head_dim] = k.dims();
        let (start, end) = (self.len, self.len + seq);
        let cache = &mut self.layers[layer];
        let write = [0..batch, 0..kv_heads, start..end, 0..head_dim];
        cache.k.inplace(|t| t.slice_assign(write.clone(), k));
        cache.v.inplace(|t| t.slice_assign(write, v));
        let read = [0..batch, 0..kv_heads, 0..end, 0..head_dim];
        (
            cache.k.clone().slice(read.clone()),
            cache.v.clone().slice(read),
        )
    }

    /// Marks `seq` more positions as written (after every layer appended them).
    pub(crate) fn advance(&mut self, seq: usize) {
        self.len += seq;
    }
}
