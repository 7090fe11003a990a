//! The flash attention as a burn backend extension: dispatch for the cubecl backend (wgpu), lazy
//! registration under Fusion, and the launcher that checks its inputs and dispatches.

use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, SourceKernel, into_contiguous};
use burn::backend::{Backend, backend_extension};
use burn::cubecl::ir::DeviceProperties;
use burn::cubecl::prelude::{CubeCount, CubeDim};
use burn::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn::tensor::{DType, Shape};

use super::source::{FlashAttention, MAX_THREADS};
use crate::caps::{cpu_subgroup_size, is_cpu_adapter};
use crate::forced::Forced;
use crate::info_words::pack_words;

/// Largest workgroup count along one grid dimension (WebGPU's default limit).
const MAX_GRID_DIM: usize = 65_535;

/// `q [batch, heads, q_len, d]`, `k`/`v` `[batch, kv_heads, kv_len, d]`, `bias [batch, kv_len]`
/// (all f32). With one slice of keys (`splits == 1`) the result is the attention output with its
/// heads merged, `[batch * q_len, heads * d]`; with more, the slices' unnormalized partial
/// results `[splits * batch * heads * q_len, d + 4]`, each row ending in (max, sum, 0, 0).
/// `window` 0 means no sliding window; `scale_bits` is the f32 scale's bit pattern.
#[backend_extension(Cube, Fusion)]
pub trait FlashAttentionBackend: Backend {
    #[fusion(dtype = DType::F32, shape = output_shape(q, *splits))]
    #[allow(clippy::too_many_arguments)]
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        causal: bool,
        window: usize,
        scale_bits: u32,
        splits: usize,
    ) -> FloatTensor<Self>;
}

/// The shape [`FlashAttentionBackend::flash_attention`] returns for `q`'s shape.
pub(crate) fn output_shape(q: &Shape, splits: usize) -> Shape {
    let [batch, heads, q_len, d] = [q[0], q[1], q[2], q[3]];
    if splits == 1 {
        Shape::new([batch * q_len, heads * d])
    } else {
        Shape::new([splits * batch * heads * q_len, d + 4])
    }
}

impl FlashAttentionBackend for CubeBackend {
    fn flash_attention(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        bias: CubeTensor,
        causal: bool,
        window: usize,
        scale_bits: u32,
        splits: usize,
    ) -> CubeTensor {
        let [q, k, v, bias] = [q, k, v, bias].map(into_contiguous);
        let q_shape = q.meta.shape().clone();
        let [batch, heads, q_len, d] = [q_shape[0], q_shape[1], q_shape[2], q_shape[3]];
        let k_shape = k.meta.shape().clone();
        let (kv_heads, kv_len) = (k_shape[1], k_shape[2]);
        assert_eq!(k_shape.as_slice(), [batch, kv_heads, kv_len, d], "k");
        assert_eq!(
            v.meta.shape().as_slice(),
            k_shape.as_slice(),
            "v must match k"
        );
        assert_eq!(bias.meta.shape().as_slice(), [batch, kv_len], "bias");
        for (name, t) in [("q", &q), ("k", &k), ("v", &v), ("bias", &bias)] {
            assert_eq!(t.dtype, DType::F32, "{name} must be f32");
        }
        assert!(
            d % 4 == 0 && kv_heads > 0 && heads % kv_heads == 0,
            "head size {d} (a multiple of 4), {heads} heads over {kv_heads} key/value heads"
        );
        assert!(q_len <= kv_len, "{q_len} queries over {kv_len} keys");
        assert!(splits >= 1, "at least one slice of keys");

        let client = q.client.clone();
        let shape = output_shape(&q_shape, splits);
        let out = CubeTensor::new_contiguous(
            client.clone(),
            q.device.clone(),
            shape.clone(),
            client.empty(shape.num_elements() * DType::F32.size()),
            DType::F32,
        );
        let cpu = is_cpu_adapter(&client.properties().identity.name);
        let (threads, rows_per_thread) = workgroup_shape(q_len, cpu);
        let grid = [
            q_len.div_ceil(threads * rows_per_thread),
            batch * heads,
            splits,
        ];
        assert!(
            grid.iter().all(|&n| n <= MAX_GRID_DIM),
            "attention too large: grid {grid:?}"
        );
        let kernel = FlashAttention {
            head_dim: d,
            threads,
            rows_per_thread,
            split: splits > 1,
            subgroup_kv: shared_kv_lanes(client.properties(), threads, d),
        };
        let params = [
            batch,
            heads,
            kv_heads,
            q_len,
            kv_len,
            usize::from(causal),
            window,
            splits,
            kv_len.div_ceil(splits),
        ]
        .map(|v| u32::try_from(v).expect("attention sizes fit in u32"));
        let mut info: Vec<u32> = params.to_vec();
        info.push(scale_bits);
        let arguments = KernelArguments::new()
            .with_buffers(vec![
                q.handle.binding(),
                k.handle.binding(),
                v.handle.binding(),
                bias.handle.binding(),
                out.handle.clone().binding(),
            ])
            .with_info(MetadataBindingInfo::custom(pack_words(&info)));
        client.launch(
            Box::new(SourceKernel::new(kernel, CubeDim::new_1d(threads as u32))),
            CubeCount::Static(grid[0] as u32, grid[1] as u32, grid[2] as u32),
            arguments,
        );
        out
    }
}

/// Query rows per thread forced on the kernel (else the rule of [`workgroup_shape`]), for tests
/// on CPU adapters.
static FORCED_ROWS_PER_THREAD: Forced = Forced::new();

/// Forces the rows each thread holds, or back to the automatic rule with `None`: lets tests on a
/// CPU adapter cover the one-row threads that GPUs run.
#[doc(hidden)]
pub fn force_attention_rows_per_thread(rows: Option<usize>) {
    FORCED_ROWS_PER_THREAD.set(rows);
}

/// Query rows one thread holds on a CPU adapter: each K/V vec4 a thread loads then serves 8 rows
/// (lavapipe loads buffers lane by lane; the registers it spills cost less). Measured on lavapipe,
/// causal prefill of 1024 tokens, 8 heads of 128: 2.4 GFLOP/s with 1 row, 7.0 with 4, 9.2 with 8,
/// 9.0 with 16 (64 threads); 13.1 with 8 rows and 8 threads.
const CPU_ROWS_PER_THREAD: usize = 8;
/// Threads of one workgroup on a CPU adapter: lavapipe runs 8 invocations side by side (256-bit
/// SIMD); fewer rows per workgroup also means less causal waste at the diagonal.
const CPU_MAX_THREADS: usize = 8;

/// The subgroup size over which the K/V loads are shared (see `shaders/flash_attention.wgsl`): a
/// CPU adapter's fixed size (`cpu_subgroup_size`) when one subgroup is the whole workgroup (no lane
/// idle: decode's single thread loads its own) and splits a key row into whole vec4s per lane.
fn shared_kv_lanes(props: &DeviceProperties, threads: usize, head_dim: usize) -> Option<usize> {
    let lanes = cpu_subgroup_size(props)? as usize;
    (threads == lanes && (head_dim / 4).is_multiple_of(lanes)).then_some(lanes)
}

/// `(threads per workgroup, query rows per thread)` for `q_len` queries. GPUs: one row per thread
/// and up to [`MAX_THREADS`] threads. CPU adapters: up to [`CPU_ROWS_PER_THREAD`] rows (fewer for
/// short queries, one when decoding) and up to [`CPU_MAX_THREADS`] threads. Threads: the rows
/// rounded up to a power of two (decoding one token runs one thread per workgroup and relies on
/// split keys for parallelism).
pub(crate) fn workgroup_shape(q_len: usize, cpu: bool) -> (usize, usize) {
    let rows_per_thread = if let Some(forced) = FORCED_ROWS_PER_THREAD.get() {
        forced
    } else if cpu {
        q_len
            .div_ceil(CPU_MAX_THREADS)
            .clamp(1, CPU_ROWS_PER_THREAD)
    } else {
        1
    };
    let threads = q_len
        .div_ceil(rows_per_thread)
        .next_power_of_two()
        .clamp(1, if cpu { CPU_MAX_THREADS } else { MAX_THREADS });
    (threads, rows_per_thread)
}
