"""Activation offloading (`--activation-offloading`, vramplan/estimator/offloading.py) pinned against TRL's own
`OffloadActivations` (trl/models/activation_offloading.py, TRL 1.16) at small size.

The oracle: TRL's pack/unpack hooks run unchanged under FakeTensorMode on the CPU (`offload_trace.offloading_session`:
the CPU as the accelerator, host copies on the meta device), measured by `MemoryTracker`, against `OffloadTape`
replaying the same program. Full-size traced plans: tests/accuracy/test_trainer_grid.py.
"""

from __future__ import annotations

import importlib.util

import pytest

from vramplan.errors import PlanError
from vramplan.estimator.offloading import MAX_FWD_STASH, MIN_OFFLOAD_BYTES, OffloadTape, host_offload_bytes
from vramplan.models import spec_from_config
from vramplan.plan import make_plan

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512}
needs_trl = pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="needs trl")


def _phases(**opts):
    from vramplan.api import estimate

    return estimate(spec_from_config(TINY, "tiny", "test"), make_plan(**opts)).phases


def test_offloading_is_trls_and_single_gpu():
    for opts in ({"trainer": "hf"}, {"trainer": "loop"}, {"trainer": "trl-sft", "gpus": 2}):
        with pytest.raises(PlanError, match="activation.offloading"):
            make_plan(method="lora", activation_offloading=True, **opts)


def test_offloading_moves_saved_activations_to_the_host():
    plain = _phases(method="lora", trainer="trl-sft", seq=256, batch=4, grad_ckpt=False)
    off = _phases(method="lora", trainer="trl-sft", seq=256, batch=4, grad_ckpt=False, activation_offloading=True)
    assert off["backward"] < plain["backward"] and off["forward"] < plain["forward"]
    plan = make_plan(method="lora", trainer="trl-sft", seq=256, batch=4, grad_ckpt=False, activation_offloading=True)
    assert host_offload_bytes(spec_from_config(TINY, "tiny", "test"), plan) > plain["forward"] - off["forward"]
    assert host_offload_bytes(spec_from_config(TINY, "tiny", "test"), make_plan(method="lora")) == 0


# The tape against TRL's hooks -------------------------------------------------------------------------------------
def _chain(tp: OffloadTape, unit: int, n: int) -> int:
    """x -> sin -> ... (each op saves its input), with `h * h` (one tensor saved twice) in the middle."""
    x = tp.new(unit, True)
    h = x
    for i in range(n):
        out = tp.op(unit, (h, h) if i == n // 2 else (h,), saves=(h, h) if i == n // 2 else (h,))
        if h != x:
            tp.drop(h)
        h = out
    return tp.op(4, (h,))


@needs_trl
@pytest.mark.slow  # imports TRL (seconds on 2 shared cores)
@pytest.mark.parametrize("n", [3, 8, 12])
def test_pack_stash_and_unpack_rules_match_trls_hooks(n):
    torch = pytest.importorskip("torch")
    from torch._subclasses.fake_tensor import FakeTensorMode
    from trl.models.activation_offloading import OffloadActivations

    from vramplan.measure.offload_trace import offloading_session
    from vramplan.measure.tracker import MemoryTracker

    unit = 64 * 256 * 4
    with offloading_session() as host, FakeTensorMode():
        ctx = OffloadActivations()
        x = torch.randn(64, 256, requires_grad=True)
        with MemoryTracker() as tr:
            start = tr.current_bytes
            with ctx:
                h = x
                for i in range(n):
                    h = h * h if i == n // 2 else torch.sin(h)
                loss = h.sum()
                fwd, kept = tr.peak_bytes - start, tr.current_bytes - start
                tr.reset_peak()
                before = tr.current_bytes
                loss.backward()
                bwd = tr.peak_bytes - before
    tape = OffloadTape()
    out = _chain(tape, unit, n)
    # the tracker does not see x (made before it started); the tape counts it (`new`)
    assert (fwd, kept, host[0]) == (tape.peak - unit, tape.live - unit, tape.host)
    rel, _ = tape.backward(out)
    assert abs(bwd - rel) <= 16, (bwd, rel)  # the scalar loss's gradient and sum's


def test_constants_are_trls():
    """get_act_offloading_ctx_manager's defaults (read from the source file, not imported: TRL is slow)."""
    spec = importlib.util.find_spec("trl")
    if spec is None:
        pytest.skip("needs trl")
    from pathlib import Path

    text = (Path(spec.origin).parent / "models" / "activation_offloading.py").read_text()
    assert f"min_offload_size: int = {MIN_OFFLOAD_BYTES}," in text
    assert f"max_fwd_stash_size: int = {MAX_FWD_STASH}," in text


def test_trl_config_maps_activation_offloading(tmp_path):
    from vramplan.configs import read_config

    path = tmp_path / "sft.yml"
    path.write_text("model_name_or_path: Qwen/Qwen2.5-1.5B\ndataset_name: x\nuse_peft: true\n"
                    "activation_offloading: true\n")
    assert read_config(path).plan_options["activation_offloading"] is True
