"""Liger kernels (`--liger`, vramplan/estimator/liger.py) pinned against Liger-Kernel's own Python at small size.

Liger's Triton kernels cannot run without a GPU. What they allocate is allocated by the Python around them, so the
oracle here is Liger's own autograd Functions and `lce_forward`, run on the CPU with every Triton launch a no-op
(`vramplan.measure.liger_trace.liger_session`) and measured by `MemoryTracker`: the buffers, the saved tensors,
the in-place gradients and the fused cross-entropy's chunking. What the CPU cannot show (the CUDA-only weight
gradient accumulation of a trainable lm_head, `sm_count`) is said in liger_trace.py. Full-size traced plans:
tests/accuracy/test_trainer_grid.py.
"""

from __future__ import annotations

import importlib.util

import pytest

from vramplan.estimator.liger import chunk_rows, liger_kernels
from vramplan.estimator.tape import Tape
from vramplan.models import spec_from_config
from vramplan.plan import make_plan
from vramplan.traits import LIGER_KERNELS, Traits, native_traits

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512}
needs_liger = pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel")


def _estimate(**opts):
    from vramplan.api import estimate

    return estimate(spec_from_config(TINY, "tiny", "test"), make_plan(**opts))


# The plan and the estimator --------------------------------------------------------------------------------------
def test_trl_trainers_keep_their_fused_head():
    """SFTTrainer/DPOTrainer.__init__ set liger_kernel_config fused_linear_cross_entropy=False."""
    llama = native_traits("llama")
    assert "flce" in liger_kernels(llama, "hf") and "flce" in liger_kernels(llama, "loop")
    assert "flce" not in liger_kernels(llama, "trl-sft") and "rms_norm" in liger_kernels(llama, "trl-dpo")
    assert liger_kernels(Traits(), "hf") == frozenset()  # no `apply_liger_kernel_to_gpt_neox`: nothing applies


def test_liger_saves_memory_and_never_costs_any():
    for opts in ({"method": "lora", "seq": 512}, {"method": "qlora", "seq": 512, "grad_ckpt": False},
                 {"method": "lora", "trainer": "loop", "seq": 256}, {"method": "full", "seq": 256}):
        plain, liger = _estimate(**opts).phases, _estimate(**opts, liger=True).phases
        assert all(liger[p] <= plain[p] for p in plain), (opts, plain, liger)
        assert liger["backward"] < plain["backward"]


def test_a_model_liger_does_not_patch_is_estimated_as_without():
    cfg = dict(TINY, model_type="gpt_neox", rotary_pct=0.25, use_parallel_residual=True, layer_norm_eps=1e-5)
    from vramplan.api import estimate

    spec = spec_from_config(cfg, "neox", "test")
    assert estimate(spec, make_plan(method="lora", seq=128, liger=True)).phases == \
        estimate(spec, make_plan(method="lora", seq=128)).phases


@pytest.mark.parametrize("bt, v, h, rows", [
    (4096, 128256, 4096, 128),  # Llama 3: cdiv(V, H) = 32 -> 4096 / 32
    (4096, 32000, 4096, 512),  # Liger's own comment: BT = 4096 * 4 ... inc_factor 8
    (100, 151936, 1536, 1),  # Qwen2.5-1.5B: cdiv(100, 99) = 2 -> next power of two... min(.., BT)
    (3, 1000, 4096, 3),  # one chunk covers BT
])
def test_chunk_rows_arithmetic(bt, v, h, rows):
    if rows == 1:  # cdiv(100, cdiv(151936, 1536) = 99) = 2 rows
        rows = 2
    assert chunk_rows(bt, v, h) == rows


# Config files ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, text, liger", [
    ("trl.yml", "model_name_or_path: Qwen/Qwen2.5-1.5B\ndataset_name: x\nuse_liger_kernel: true\n", True),
    ("trl.yml", "model_name_or_path: Qwen/Qwen2.5-1.5B\ndataset_name: x\nuse_liger_kernel: true\n"
     "liger_kernel_config: {fused_linear_cross_entropy: false}\n", True),  # what TRL sets itself
    ("args.json", '{"output_dir": "o", "per_device_train_batch_size": 2, "use_liger_kernel": true}', True),
    ("ax.yml", "base_model: meta-llama/Llama-3.1-8B\nliger_rope: true\nliger_rms_norm: true\n"
     "liger_glu_activation: true\nliger_fused_linear_cross_entropy: true\n", True),
    ("ax.yml", "base_model: meta-llama/Llama-3.1-8B\nliger_rope: true\nliger_rms_norm: true\nliger_swiglu: true\n"
     "liger_fused_linear_cross_entropy: true\n", True),
    ("lf.yml", "model_name_or_path: Qwen/Qwen2.5-1.5B\nstage: sft\nfinetuning_type: lora\n"
     "enable_liger_kernel: true\n", True),
])
def test_config_files_map_liger(tmp_path, name, text, liger):
    from vramplan.configs import read_config

    path = tmp_path / name
    path.write_text(text)
    assert read_config(path).plan_options.get("liger") is liger


@pytest.mark.parametrize("text", [
    "base_model: m\nliger_rope: true\nliger_rms_norm: true\nliger_fused_linear_cross_entropy: true\n",
    "base_model: m\nliger_cross_entropy: true\n",
])
def test_a_per_kernel_selection_is_refused(tmp_path, text):
    from vramplan.configs import ConfigReadError, read_config

    path = tmp_path / "ax.yml"
    path.write_text(text)
    with pytest.raises(ConfigReadError, match="liger"):
        read_config(path)


# Liger's own code, at small size ---------------------------------------------------------------------------------
def _liger_ops():
    torch = pytest.importorskip("torch")
    from vramplan.measure.liger_trace import liger_session
    from vramplan.measure.tracker import MemoryTracker

    return torch, liger_session, MemoryTracker


@needs_liger
@pytest.mark.slow  # imports liger_kernel (seconds on 2 shared cores)
def test_kernel_table_is_ligers():
    import inspect

    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    names = {"rope": "rope", "rms_norm": "rms_norm", "swiglu": "swiglu", "geglu": "geglu",
             "fused_linear_cross_entropy": "flce", "cross_entropy": "cross_entropy"}
    for model_type, kernels in LIGER_KERNELS.items():
        params = inspect.signature(MODEL_TYPE_TO_APPLY_LIGER_FN[model_type]).parameters
        on = {names[k] for k, p in params.items() if k in names and p.default is True}
        assert on == kernels - {"rms_norm_copy"}, model_type


@needs_liger
@pytest.mark.slow
@pytest.mark.parametrize("bt, v, h", [(256, 1000, 64), (96, 5000, 32), (7, 300, 64)])
def test_fused_linear_cross_entropy_buffers(bt, v, h):
    """`fused_linear_cross_entropy_forward` on its CUDA path: grad_input [BT, H], loss_1d fp32, the target mask,
    and one [chunk_rows, V] logits buffer; backward hands grad_input back without a new [BT, H] tensor."""
    torch, liger_session, MemoryTracker = _liger_ops()
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    with liger_session(None):
        x = torch.randn(bt, h, dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(v, h, dtype=torch.bfloat16)
        target = torch.randint(0, v, (bt,))
        with MemoryTracker(record=True) as tr:
            start = tr.current_bytes
            loss = LigerFusedLinearCrossEntropyFunction.apply(x, w, target)[0]
            fwd, kept = tr.peak_bytes - start, tr.current_bytes - start
            tr.reset_peak()
            before = tr.current_bytes
            loss.backward()
            bwd = tr.peak_bytes - before
    storage = chunk_rows(bt, v, h) * v * 2
    buffers = bt * h * 2 + bt * 4 + bt
    assert buffers + storage <= fwd <= buffers + storage + 64
    assert bt * h * 2 <= kept <= bt * h * 2 + 64  # grad_input, saved for backward (and the scalar loss)
    assert bwd <= 64  # grad_input is returned as x's gradient: no new tensor


@needs_liger
@pytest.mark.slow
def test_rmsnorm_and_swiglu_against_the_tape():
    """Each Liger Function's forward and backward bytes against `liger.py`'s program on the tape."""
    torch, liger_session, MemoryTracker = _liger_ops()
    from dataclasses import replace

    from liger_kernel.ops import LigerRMSNormFunction, LigerSiLUMulFunction

    from vramplan.estimator import liger
    from vramplan.estimator.context import layer_context

    t, hdim, inter = 128, 64, 128
    c = replace(layer_context(spec_from_config(TINY, "tiny", "test"), make_plan(method="lora", seq=t)),
                liger=frozenset({"rms_norm", "swiglu"}))

    def measure(fn, *inputs):
        with MemoryTracker() as tr:
            start = tr.current_bytes
            out = fn(*inputs)
            fwd, kept = tr.peak_bytes - start, tr.current_bytes - start
            tr.reset_peak()
            before = tr.current_bytes
            out.backward(torch.ones_like(out))
            return fwd, kept, tr.peak_bytes - before

    def program(build):
        tp = Tape()
        out = build(tp)
        fwd, kept = tp.peak, tp.live
        rel, _ = tp.backward(out)
        return fwd, kept, rel

    with liger_session(None):
        x = torch.randn(1, t, hdim, dtype=torch.bfloat16, requires_grad=True)
        w = torch.ones(hdim, dtype=torch.bfloat16)
        real = measure(lambda a: LigerRMSNormFunction.apply(a, w, 1e-6), x)
        gate = torch.randn(t, inter, dtype=torch.bfloat16, requires_grad=True)
        up = torch.randn(t, inter, dtype=torch.bfloat16, requires_grad=True)
        real_glu = measure(lambda a, b: LigerSiLUMulFunction.apply(a, b), gate, up)

    def norm(tp):
        return liger.rmsnorm(tp, c, tp.new(t * hdim * 2, True), 2, hdim)[0]

    def glu(tp):
        return liger.swiglu(tp, c, tp.new(t * inter * 2, True), tp.new(t * inter * 2, True), 2, inter)

    # the tape counts the inputs (`tp.new`), the tracker does not; backward: the incoming gradient is the peak
    # (the kernels write the input gradients into dY, or into the saved gate and up)
    fwd, kept, bwd = program(norm)
    assert (real[0], real[1]) == (fwd - t * hdim * 2, kept - t * hdim * 2)
    assert real[2] == bwd
    fwd, kept, bwd = program(glu)
    assert (real_glu[0], real_glu[1]) == (fwd - 2 * t * inter * 2, kept - 2 * t * inter * 2)
    assert real_glu[2] == bwd


@needs_liger
@pytest.mark.slow
def test_rope_rotates_in_place():
    """`liger_rotary_pos_emb` allocates nothing in the forward (q and k rotated in their projections' buffers,
    cos and sin saved) and nothing in the backward beyond the incoming gradients: `liger.rotary` is an alias."""
    torch, liger_session, MemoryTracker = _liger_ops()
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    with liger_session(None):
        q_proj = torch.randn(1, 128, 4 * 16, dtype=torch.bfloat16, requires_grad=True)
        k_proj = torch.randn(1, 128, 2 * 16, dtype=torch.bfloat16, requires_grad=True)
        cos, sin = torch.randn(1, 128, 16, dtype=torch.bfloat16), torch.randn(1, 128, 16, dtype=torch.bfloat16)
        with MemoryTracker() as tr:
            q = (q_proj * 1).view(1, 128, 4, 16).transpose(1, 2)  # the projection's output, as attention views it
            k = (k_proj * 1).view(1, 128, 2, 16).transpose(1, 2)
            start = tr.current_bytes
            qr, kr = liger_rotary_pos_emb(q, k, cos, sin)
            assert tr.peak_bytes == start == tr.current_bytes
            gq, gk = torch.ones_like(qr), torch.ones_like(kr)
            torch.autograd.backward((qr, kr), (gq, gk), inputs=(q_proj, k_proj))
    assert qr.data_ptr() == q.data_ptr()
    tape = Tape()
    x = tape.new(128 * 64 * 2, True)
    from vramplan.estimator import liger

    assert liger.rotary(tape, x, 2) == (x, 2) and tape.live == 128 * 64 * 2
