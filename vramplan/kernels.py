"""How fast a GPU runs each kind of kernel a fine-tuning step launches: rates per GPU generation, times per kernel.

A training step is a sequence of kernels on one CUDA stream, so its time is the sum of the kernels' times, each
bounded by its compute or its memory traffic (a roofline per kernel, not per step). The rates come from
measurements, each with an interval (`Bound`: `low`, `mid`, `high`), never fitted to one run:

* Matmuls (cuBLAS / hipBLASLt): the *maximum achievable matmul FLOPS* (MAMF), measured by a brute-force search
  over GEMM shapes (S. Bekman, ml-engineering, `compute/accelerator/README.md`, "Maximum Achievable Matmul FLOPS
  comparison table", BF16): A100 SXM 271.2 of 312 TFLOPS (86.9%), A100 PCIe 252.9 (81.1%), H100/H200 SXM
  794.5 of 989 (80.3%), GH200 828.6 (83.8%), B200 1745 of 2250 (77.6%), MI250X 147.0 of 191.5 per GCD
  (76.7%), MI300X 668.4 of 1300 (51.4%), MI325X 784.9 (60.4%). A profile stores its row as `mamf_tflops`;
  a GPU without a measurement takes its vendor's typical fraction (`DEFAULT_MAMF_FRACTION`). MAMF is the *best*
  shape; a model's shapes get `MATMUL_SHAPE_FRACTION` of it (low..high), less the tile padding of dimensions
  that are not multiples of the GEMM tile (`gemm_s`). A GEMM whose operands are large next to its FLOPs (LoRA's
  rank-r products, small micro-batches) is memory-bound: reading and writing its operands takes longer.
* Flash attention (PyTorch sdpa's FLASH backend and flash-attn 2 are the same FA2 algorithm): "50-73% of the
  theoretical maximum FLOPs/s on A100" (FA2 paper, Dao 2023, arXiv:2307.08691, abstract; its forward+backward
  benchmarks rise with sequence length), and "only 35% utilization on the H100" (FA3 paper, Shah et al. 2024,
  arXiv:2407.08608, abstract). Modelled as `e_max x seq / (seq + FLASH_HALF_SEQ)` per architecture.
  Its backward recomputes the scores: 2.5x the forward's FLOPs (both papers count it so).
* Memory-bound kernels (norms, residual adds, activations, casts, the loss, optimizer steps, eager attention's
  score matrix): `STREAM_FRACTION` of the datasheet bandwidth, as PyTorch's vectorised elementwise kernels reach
  on large tensors (an assumption, not measured here: 0.7-0.9, the range copy kernels reach on HBM and GDDR).
* bitsandbytes 4-bit dequantization (`kDequantizeBlockwise`, csrc/kernels.cu): reads 0.5 byte per weight plus its
  absmax, writes the 16-bit weight; `DEQUANT_FRACTION` of the bandwidth (assumption: a gather through the 16-entry
  NF4 code table per nibble and one absmax per 64 weights; unmeasured, hence the wide interval).
* CPU dispatch: eager PyTorch launches every op from Python; while a micro-batch's kernels are shorter than their
  launches the GPU waits (`DISPATCH_SECONDS_PER_OP`: ~10 us per aten op through nn.Module, autograd and the CUDA
  launch; an assumption, not measured here: the eager overhead that CUDA graphs and torch.compile exist to remove).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from vramplan.hardware import GpuProfile

Bound = Literal["low", "mid", "high"]
BOUNDS: tuple[Bound, ...] = ("low", "mid", "high")

# MAMF / dense peak for a GPU without a measured `mamf_tflops` (median of the measured rows per vendor, with the
# spread of those rows as the interval; consumer cards have no MAMF row: the NVIDIA figure is an extrapolation).
DEFAULT_MAMF_FRACTION = {"nvidia": 0.80, "amd": 0.55}
MATMUL_SHAPE_FRACTION = {"low": 0.80, "mid": 0.90, "high": 1.0}  # a model's GEMM shapes vs the best shape
GEMM_TILE = 128  # cuBLAS/CUTLASS output tiles are 128 (or 64/256) wide: a dimension pads to a multiple of it
# FA2 fwd+bwd, fraction of the 16-bit dense peak at long sequences, per architecture (see module docstring).
FLASH_MAX_FRACTION = {
    "Ampere": {"low": 0.55, "mid": 0.65, "high": 0.72},  # FA2 paper: up to 72-73% on A100
    "Ada Lovelace": {"low": 0.45, "mid": 0.55, "high": 0.65},  # FA2 on sm89 (no A100-class smem): assumption
    "Hopper": {"low": 0.30, "mid": 0.36, "high": 0.42},  # FA3 paper's FA2 baseline on H100
    "Blackwell": {"low": 0.25, "mid": 0.32, "high": 0.40},  # FA2 without Blackwell's tcgen05 MMA: assumption
}
FLASH_DEFAULT = {"low": 0.25, "mid": 0.35, "high": 0.45}  # AMD CK flash attention and others: assumption
FLASH_HALF_SEQ = 128  # seq at which FA2 reaches half its long-sequence efficiency (FA2 paper's seq sweep)
MEM_EFFICIENT_FRACTION = 0.6  # sdpa's memory-efficient (cutlass) backend vs FA2 where FA2 cannot run (assumption)
STREAM_FRACTION = {"low": 0.70, "mid": 0.80, "high": 0.90}
DEQUANT_FRACTION = {"low": 0.30, "mid": 0.50, "high": 0.70}
DISPATCH_SECONDS_PER_OP = {"low": 15e-6, "mid": 10e-6, "high": 6e-6}


@dataclass(frozen=True)
class Rates:
    """What one GPU achieves, at one end of the interval: FLOP/s and bytes/s per kind of kernel."""

    matmul_flops: float  # 16-bit tensor-core GEMMs at the best shape x the shape fraction
    fp32_flops: float  # fp32 GEMMs (LoRA adapters kept in fp32; TF32 is off by default in torch)
    flash_flops: float  # 16-bit FA2 at long sequences (the memory-efficient backend where FA2 cannot run)
    flash_backend: bool  # sdpa picks FLASH (sm80+, 16-bit); else the memory-efficient backend
    bytes_per_s: float  # memory-bound kernels
    dequant_bytes_per_s: float
    dispatch_s: float  # CPU time to launch one op


def mamf_fraction(gpu: GpuProfile) -> float:
    """Measured MAMF / dense 16-bit peak, or the vendor default."""
    mamf = gpu.mamf_tflops
    peak = gpu.bf16_tflops_dense or gpu.fp16_tflops_dense
    return mamf / peak if mamf else DEFAULT_MAMF_FRACTION.get(gpu.vendor, 0.7)


def rates(gpu: GpuProfile, bound: Bound) -> Rates:
    """The GPU's rates at one end of the interval."""
    peak16 = (gpu.bf16_tflops_dense or gpu.fp16_tflops_dense) * 1e12
    shape = MATMUL_SHAPE_FRACTION[bound]
    flash_table = FLASH_MAX_FRACTION.get(gpu.architecture, FLASH_DEFAULT)
    major = int(gpu.compute_capability.split(".")[0]) if gpu.compute_capability else 0
    flash_backend = major >= 8 if gpu.vendor == "nvidia" else True  # FA2 needs sm80+; ROCm: aotriton/CK flash
    flash = peak16 * flash_table[bound] * (1.0 if flash_backend else MEM_EFFICIENT_FRACTION)
    bandwidth = gpu.bandwidth_bytes_per_s
    return Rates(peak16 * mamf_fraction(gpu) * shape, gpu.fp32_tflops * 1e12 * shape, flash, flash_backend,
                 bandwidth * STREAM_FRACTION[bound], bandwidth * DEQUANT_FRACTION[bound],
                 DISPATCH_SECONDS_PER_OP[bound])


def _padded(d: int) -> int:
    return math.ceil(d / GEMM_TILE) * GEMM_TILE if d >= GEMM_TILE else d


def gemm_s(m: int, n: int, k: int, r: Rates, elem_bytes: int = 2, fp32: bool = False, batch: int = 1) -> float:
    """One (batched) GEMM [m, k] x [k, n]: the longer of its FLOPs at the matmul rate (tile-padded m and n) and
    reading both operands and writing the result once."""
    flops = 2.0 * batch * _padded(m) * _padded(n) * k
    traffic = elem_bytes * batch * (m * k + k * n + m * n)
    return max(flops / (r.fp32_flops if fp32 else r.matmul_flops), traffic / r.bytes_per_s)


def linear_s(tokens: int, n_in: int, n_out: int, r: Rates, weight_grad: bool, input_grad: bool = True,
             elem_bytes: int = 2, fp32: bool = False) -> tuple[float, float]:
    """(forward, backward) seconds of `y = x W^T` for `tokens` rows: backward is dX = dY W (if the input needs a
    gradient) and dW = dY^T X (if W is trained), as autograd's `mm` backward computes them."""
    fwd = gemm_s(tokens, n_out, n_in, r, elem_bytes, fp32)
    bwd = (gemm_s(tokens, n_in, n_out, r, elem_bytes, fp32) if input_grad else 0.0)
    bwd += gemm_s(n_out, n_in, tokens, r, elem_bytes, fp32) if weight_grad else 0.0
    return fwd, bwd


def flash_attention_s(batch: int, seq: int, heads: int, head_dim: int, r: Rates,
                      fp32: bool = False) -> tuple[float, float]:
    """(forward, backward) of causal FA2 over `heads` query heads: 4 b s^2 h d FLOPs forward (QK^T and PV), halved
    by the causal mask (masked tiles are skipped), backward 2.5x (it recomputes the scores). fp32 q/k/v cannot
    use FLASH: sdpa's memory-efficient backend runs them on CUDA cores (the fp32 rate)."""
    flops = 4.0 * batch * seq * seq * heads * head_dim * 0.5
    peak = r.fp32_flops * MEM_EFFICIENT_FRACTION if fp32 else r.flash_flops
    rate = peak * seq / (seq + FLASH_HALF_SEQ)
    return flops / rate, 2.5 * flops / rate


def eager_score_bytes(e: int) -> tuple[int, int]:
    """(forward, backward) bytes moved per element of the [b, heads, s, s] score matrix, q/k/v of e bytes, by
    transformers' `eager_attention_forward` (modeling_llama.py), GEMM operands excluded: `* scaling` and
    `+ causal_mask` read and write it (2e each; the mask is broadcast over heads), `softmax(dtype=float32)` casts
    to fp32 (e + 4), runs (4 + 4), and `.to(query.dtype)` casts back (4 + e); fp32 scores skip both casts.
    Measured op by op in tests/test_speed.py. Backward (not measured): the same ops' backwards, dS read twice."""
    forward = 4 * e + 8 + (2 * e + 8 if e != 4 else 0)
    return forward, forward + 2 * e


def eager_attention_s(batch: int, seq: int, heads: int, head_dim: int, r: Rates, e: int = 2) -> tuple[float, float]:
    """(forward, backward) of eager attention: the full square is computed (the mask is added, not skipped) as
    batched GEMMs with K = head_dim (QK^T) or K = seq (PV), and every elementwise op streams the score matrix."""
    qk = gemm_s(seq, seq, head_dim, r, e, fp32=e == 4, batch=batch * heads)
    pv = gemm_s(seq, head_dim, seq, r, e, fp32=e == 4, batch=batch * heads)
    scores = batch * heads * seq * seq
    fwd_bytes, bwd_bytes = eager_score_bytes(e)
    return qk + pv + scores * fwd_bytes / r.bytes_per_s, 2 * (qk + pv) + scores * bwd_bytes / r.bytes_per_s


def stream_s(nbytes: float, r: Rates) -> float:
    """A memory-bound kernel (or a sequence of them) moving `nbytes`."""
    return nbytes / r.bytes_per_s
