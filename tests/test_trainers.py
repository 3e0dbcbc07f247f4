"""The training loops' byte rules (vramplan/estimator/trainers.py, losses.py, evaluation.py), pinned against the
libraries at small size on CPU: TRL 1.16's fused LM head, a custom loop's outputs, the eval step.

The oracle is the real code traced by `MemoryTracker` (TRL's own `SFTTrainer.compute_loss`, transformers'
`EvalLoopContainer`), never the estimator. Full-size cases live in tests/accuracy/test_trainer_grid.py (slow).
"""

from __future__ import annotations

import pytest

from vramplan.errors import PlanError
from vramplan.estimator.losses import TRL_RUNNING_STATS, TRL_TOKEN_TILE, TRL_VOCAB_TILE
from vramplan.models import spec_from_config
from vramplan.plan import make_plan

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512}


# Plans --------------------------------------------------------------------------------------------------------
def test_trl_sft_defaults_follow_trl():
    plan = make_plan(method="qlora", trainer="trl-sft")
    assert plan.loss_type == "nll"  # SFTConfig.loss_type default
    assert plan.kbit_upcast is False  # SFTTrainer never calls prepare_model_for_kbit_training
    assert make_plan(method="qlora").kbit_upcast is True
    assert make_plan(method="lora").loss_type is None


@pytest.mark.parametrize("opts, word", [
    ({"loss_type": "dft"}, "--loss-type"),
    ({"eval_accumulation_steps": 2}, "--eval-batch"),
    ({"eval_batch": 2, "prediction_loss_only": False}, "--eval-accumulation-steps"),
    ({"trainer": "trl-grpo"}, "trainer"),
    ({"eval_batch": 2, "gpus": 2, "sharding": "fsdp"}, "one GPU only"),
    ({"packing": True}, "--packing"),
    ({"trainer": "trl-orpo", "method": "qlora"}, "trl-orpo"),
    ({"trainer": "trl-orpo", "activation_offloading": True}, "activation.offloading"),
    ({"packing": True, "trainer": "trl-sft", "eval_batch": 2}, "--packing"),
])
def test_bad_trainer_options_are_one_line_errors(opts, word):
    with pytest.raises(PlanError, match=word.lstrip("-").replace("-", "[-_]") if word == "trainer" else word):
        make_plan(**{"method": "lora", **opts})


# TRL's constants and the fused head's buffers --------------------------------------------------------------------
@pytest.mark.slow  # imports TRL and traces (seconds each on 2 shared cores)
def test_tile_sizes_are_trls():
    trl_kernels = pytest.importorskip("trl.kernels.chunked_logprob")
    from trl.trainer import utils

    assert TRL_TOKEN_TILE == trl_kernels.TOKEN_CHUNK_SIZE
    assert TRL_VOCAB_TILE == utils._CHUNKED_LOGPROB_CHUNK_SIZE


@pytest.mark.slow  # imports TRL and traces (seconds each on 2 shared cores)
@pytest.mark.parametrize("dtype, weight_grad", [("bf16", False), ("bf16", True), ("fp32", False)])
def test_chunked_logprob_buffers(dtype, weight_grad):
    """ChunkedLogProbFunction on its CUDA path (Triton folds as no-ops): forward allocates the 7 running stats and
    one tile; backward an fp32 grad_hidden (cast at the end), an fp32 grad_weight when the head trains, a tile."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.kernels import ChunkedLogProbFunction

    from vramplan.measure.tracker import MemoryTracker
    from vramplan.measure.trl_kernels import triton_tiles

    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    n, h, v = 300, 32, 70_000  # three vocabulary tiles
    e = 2 if dtype == "bf16" else 4
    tile = min(n, TRL_TOKEN_TILE) * TRL_VOCAB_TILE * e
    with triton_tiles():
        hidden = torch.randn(n, h, dtype=dt, requires_grad=True)
        weight = torch.randn(v, h, dtype=dt, requires_grad=weight_grad)
        targets = torch.randint(0, v, (n,))
        with MemoryTracker() as tr:
            start = tr.current_bytes
            out = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, TRL_VOCAB_TILE, None, 1.0,
                                               ("log_probs", "entropy", "is_top1"))
            fwd = tr.peak_bytes - start
            tr.reset_peak()
            before = tr.current_bytes
            out[0].sum().backward()
            bwd = tr.peak_bytes - before
    stats = TRL_RUNNING_STATS * n * 4
    # the forward peak: buffers + tile, plus a few [N] outputs (log_z, log-probs, entropy, top-1 flags)
    assert stats + tile <= fwd <= stats + tile + 6 * n * 4
    grad_h = n * h * 4 + (n * h * e if e != 4 else 0)
    grad_w = (v * h * 4 + v * h * e) if weight_grad and e != 4 else (v * h * 4 if weight_grad else 0)
    assert tile + grad_h + grad_w <= bwd <= tile + grad_h + grad_w + 4 * n * 4


# Whole steps at small size: the estimate against the traced library code -------------------------------------
def _phases(plan):
    from vramplan.api import estimate

    return estimate(spec_from_config(TINY, "tiny", "test"), plan)


@pytest.mark.slow  # imports TRL and traces (seconds each on 2 shared cores)
@pytest.mark.parametrize("opts", [
    {"method": "lora", "trainer": "trl-sft", "batch": 2, "seq": 128},
    {"method": "full", "trainer": "trl-sft", "seq": 128, "loss_type": "dft"},
    {"method": "qlora", "trainer": "trl-sft", "seq": 128, "grad_ckpt": False},
    {"method": "lora", "trainer": "loop", "batch": 2, "seq": 128},
    {"method": "lora", "trainer": "loop", "seq": 128, "grad_ckpt": False},
    {"method": "full", "trainer": "loop", "seq": 128},
    {"method": "lora", "trainer": "trl-dpo", "seq": 128},
    {"method": "full", "trainer": "trl-dpo", "seq": 128},
    {"method": "qlora", "trainer": "trl-dpo", "seq": 128, "precompute_ref_log_probs": True},
    {"method": "lora", "trainer": "trl-sft", "batch": 3, "seq": 128, "packing": True},
    {"method": "full", "trainer": "trl-sft", "batch": 2, "seq": 128, "packing": True, "attn": "eager"},
    # Liger (no-op Triton launches: liger_trace.py): fused linear cross-entropy under hf/loop, layer kernels
    {"method": "lora", "batch": 2, "seq": 128, "liger": True},
    {"method": "lora", "seq": 128, "grad_ckpt": False, "liger": True},
    {"method": "qlora", "seq": 128, "liger": True},
    {"method": "lora", "trainer": "trl-sft", "seq": 128, "liger": True},
    {"method": "lora", "trainer": "loop", "seq": 128, "liger": True},
    # ORPO: chosen + rejected, the full logits (one pair: no contiguous copy of the chosen logits)
    {"method": "lora", "trainer": "trl-orpo", "batch": 2, "seq": 128},
    {"method": "full", "trainer": "trl-orpo", "seq": 128},
    {"method": "lora", "trainer": "trl-orpo", "seq": 128, "grad_ckpt": False},
    # KTO: the KL rows' no-grad pass, the policy, the reference's KL and main passes (PEFT: adapters disabled)
    {"method": "lora", "trainer": "trl-kto", "batch": 2, "seq": 128},
    {"method": "full", "trainer": "trl-kto", "batch": 2, "seq": 128},
    {"method": "qlora", "trainer": "trl-kto", "batch": 2, "seq": 128, "precompute_ref_log_probs": True},
])
def test_step_matches_traced_trainer(opts):
    pytest.importorskip("trl")
    from vramplan.measure.trl_trace import measure_trainer_step

    plan = make_plan(**opts)
    step = measure_trainer_step(TINY, plan, trace=True)
    est = _phases(plan)
    phases = est.traced_phases or est.phases
    for phase, traced in (("forward", step.forward_peak_bytes), ("backward", step.backward_peak_bytes),
                          ("optimizer", step.optimizer_peak_bytes)):
        # tiny model: the fused head's N x hidden selection copy (CUDA only) is the largest allowed difference
        # (N: the packed row's tokens)
        tokens = plan.batch * plan.seq if plan.packing else 128
        assert abs(phases[phase] - traced) <= tokens * 64 * 4 + 8192, (phase, phases[phase], traced)


@pytest.mark.slow  # imports TRL
def test_packing_is_one_padding_free_row_with_a_block_diagonal_sdpa_mask():
    """TRL 1.16: packing 'bfd' turns padding_free on; its collator returns one row with position_ids and no
    attention_mask. transformers 5: those position ids give sdpa an explicit [1, 1, T, T] bool mask (block
    diagonal), where unpacked rows of the same length run with is_causal (no mask)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from transformers import LlamaConfig
    from transformers.masking_utils import create_causal_mask
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    fields = SFTConfig.__dataclass_fields__
    # the default strategy; SFTTrainer.__init__ turns padding_free on for it
    assert fields["packing_strategy"].default == "bfd" and fields["padding_free"].default is False
    rows = [{"input_ids": list(range(1, 6)), "seq_lengths": [2, 3]}, {"input_ids": list(range(1, 5)),
                                                                        "seq_lengths": [4]}]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert "attention_mask" not in batch and batch["input_ids"].shape == batch["position_ids"].shape == (1, 9)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1, 2, 3]]
    config = LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"})
    config._attn_implementation = "sdpa"
    embeds = torch.zeros(1, 9, 64)
    mask = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=None, cache=None,
                              position_ids=batch["position_ids"])
    assert mask.shape == (1, 1, 9, 9) and mask.dtype == torch.bool
    assert not mask[0, 0, 2, 1] and mask[0, 0, 4, 2]  # the second sequence does not see the first
    unpacked = create_causal_mask(config=config, inputs_embeds=torch.zeros(2, 9, 64), attention_mask=None,
                                  cache=None, position_ids=torch.arange(9).unsqueeze(0))
    assert unpacked is None
    packed = _phases(make_plan(method="lora", trainer="trl-sft", batch=2, seq=128, packing=True)).phases
    padded = _phases(make_plan(method="lora", trainer="trl-sft", batch=2, seq=128)).phases
    assert packed["backward"] - padded["backward"] >= (2 * 128) ** 2  # at least the bool mask the checkpoints hold


@pytest.mark.parametrize("sharding", ["ddp", "fsdp", "zero3"])
def test_several_gpus_price_the_loop_and_dpo(sharding):
    """The engines re-price the step's moments (estimator/engines): a custom loop's logits are per-GPU activations
    (no engine shards them), DPO's reference pass is one of the moments; the frozen reference copy of a full DPO is
    held whole (TRL's prepare_fsdp / ZeRO-3 prepare_deepspeed shard it: an upper bound there)."""
    hf = _phases(make_plan(method="lora", batch=2, seq=128, gpus=2, sharding=sharding)).phases
    loop = _phases(make_plan(method="lora", trainer="loop", batch=2, seq=128, gpus=2, sharding=sharding)).phases
    assert loop["backward"] - hf["backward"] == 2 * 128 * 1000 * 2  # bf16 [batch, seq, vocab]
    dpo = _phases(make_plan(method="full", trainer="trl-dpo", seq=128, gpus=2, sharding=sharding)).phases
    plain = _phases(make_plan(method="full", seq=128, batch=2, gpus=2, sharding=sharding)).phases
    ref = _phases(make_plan(method="full", seq=128)).phases["load"]  # the frozen copy, whole
    assert dpo["load"] - plain["load"] == ref and dpo["forward"] > plain["forward"]


def test_loop_keeps_the_logits_through_the_step():
    """The custom loop's extra bytes over HF Trainer are the previous outputs' logits (bf16 [batch, seq, vocab])."""
    hf = _phases(make_plan(method="lora", batch=2, seq=128)).phases
    loop = _phases(make_plan(method="lora", trainer="loop", batch=2, seq=128)).phases
    logits = 2 * 128 * 1000 * 2
    assert loop["backward"] - hf["backward"] == logits
    assert loop["optimizer"] - hf["optimizer"] == logits + 2 * 2 * 128 * 64 * 2  # + the embedding leaf and .grad


@pytest.mark.slow  # imports TRL and traces (seconds each on 2 shared cores)
@pytest.mark.parametrize("opts", [
    {"method": "lora", "seq": 128, "eval_batch": 4},
    {"method": "lora", "seq": 128, "eval_batch": 2, "prediction_loss_only": False, "eval_accumulation_steps": 3},
])
def test_eval_step_matches_traced_evaluation_loop(opts):
    pytest.importorskip("trl")
    from vramplan.measure.eval_trace import measure_eval_step

    plan = make_plan(**opts)
    traced = measure_eval_step(TINY, plan)
    assert abs(_phases(plan).phases["eval"] - traced) <= 0.01 * traced


def test_eval_that_does_not_fit_fails_the_verdict():
    from vramplan.api import estimate
    from vramplan.models import resolve_model

    model = resolve_model("llama3.1-8b")
    train = estimate(model, make_plan(method="qlora", seq=2048), gpu="rtx4090")
    both = estimate(model, make_plan(method="qlora", seq=2048, eval_batch=8), gpu="rtx4090")
    assert train.fits and not both.fits
    assert both.peak_bytes == both.phases["eval"]
