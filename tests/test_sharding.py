"""The per-GPU estimator (estimator/engines/, partition.py; the step's moments in step.py) without torch.

Real runs of the torch engines are in tests/distributed/; here: the plan rules, the arithmetic each engine's
docstring states (pinned by hand), and the identities that tie the per-GPU estimate to the single-GPU one.
"""

from __future__ import annotations

import json

import pytest

from vramplan.cli import main
from vramplan.errors import PlanError
from vramplan.estimator import estimate_memory
from vramplan.estimator.partition import build_units
from vramplan.estimator.single_gpu import estimate_single_gpu as single_gpu_estimate
from vramplan.estimator.single_gpu import estimate_step
from vramplan.estimator.step_tensors import batch_bytes
from vramplan.estimator.weights import static_memory
from vramplan.models import presets, resolve_model, spec_from_config
from vramplan.plan import make_plan

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=250)
GiB = 2**30


@pytest.fixture(scope="module")
def llama7b():
    return resolve_model("llama2-7b")


# The plan ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "message"), [
    (dict(gpus=2, sharding="none"), "--sharding none trains on one GPU; with --gpus 2 choose ddp"),
    (dict(gpus=0), "gpus: 0 is out of range: give an integer from 1"),
    (dict(sharding="fsdp", offload="optimizer"), "use --offload params (FSDP offloads parameters"),
    (dict(sharding="ddp", offload="optimizer"), "--offload optimizer needs DeepSpeed ZeRO"),
    (dict(sharding="zero2", offload="params"), "--offload params needs --sharding fsdp, fsdp_grad_op or zero3"),
    (dict(method="lora", quant_storage="bf16"), "--quant-storage applies to method qlora only"),
    (dict(sharding="zero3", quant_storage="uint8"), "use --quant-storage bf16"),
])
def test_nonsense_is_one_line_plan_error(options, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        make_plan(**options)


def test_defaults_one_gpu_plain_several_ddp():
    assert make_plan().parallelism == "none" and not make_plan().multi_gpu
    assert make_plan(gpus=4).parallelism == "ddp"
    assert make_plan(sharding="fsdp").gpus == 1  # FSDP on one GPU is legal (CPU offload of a model that fits)


def test_sharded_qlora_is_fsdp_qlora():
    """trl's SFTTrainer skips prepare_model_for_kbit_training for sharded QLoRA (no fp32 upcast), and the 4-bit
    weights are stored in the param dtype so FSDP can shard them; plain QLoRA keeps bitsandbytes' uint8."""
    fsdp = make_plan(method="qlora", sharding="fsdp", gpus=2)
    assert (fsdp.kbit_upcast, fsdp.storage_dtype) == (False, "bf16")
    assert make_plan(method="qlora", sharding="fsdp", kbit_upcast=True).kbit_upcast
    plain = make_plan(method="qlora", gpus=2)
    assert (plain.kbit_upcast, plain.storage_dtype) == (True, "uint8")


@pytest.mark.parametrize("name", ["llama2-7b", "qwen2.5-0.5b", "gemma2-2b", "mixtral-8x7b"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_one_gpu_estimates_are_cores_untouched(name, method):
    model = resolve_model(name)
    plan = make_plan(method=method)
    assert estimate_memory(model, plan) == single_gpu_estimate(model, plan)


# The moments ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("options", [dict(grad_ckpt=True), dict(grad_ckpt=False), dict(grad_accum=4)])
def test_every_moment_splits_into_gradients_and_activations(method, options):
    """The engines keep a moment's activations and re-price its gradients, so the split must be physical: no
    part negative, no more gradient than the trainable parameters have (plus lm_head's second gradient while a
    tied embedding waits for its own), and after backward only the batch outlives the step's activations."""
    for name in presets():
        model = resolve_model(name)
        plan = make_plan(method=method, **options)
        st = static_memory(model, plan)
        tied = model.vocab_size * model.hidden_size * 2 if model.tied_embeddings and method == "full" else 0
        for m in estimate_step(model, plan).moments:
            assert m.activations >= 0 and 0 <= m.gradients <= st.trainable_bytes + tied, (name, m)
            if m.phase == "optimizer":
                assert m.activations == batch_bytes(plan), (name, m)


# Units and shards -------------------------------------------------------------------------------------------

def test_units_hold_every_parameter_once():
    for name in ("llama2-7b", "gemma2-2b", "qwen3-30b-a3b", "phi3-mini"):
        model = resolve_model(name)
        for method in ("full", "lora", "qlora"):
            plan = make_plan(method=method)
            st, units = static_memory(model, plan), build_units(model, plan, gpus=1)
            params = units.total("full") + units.total("replicated_bytes")
            assert 0 <= st.total - params <= 4096  # what is left: rotary buffers, which are not parameters
            assert len(units.layers) == model.num_layers


def test_fsdp_pads_dim0_to_the_world_size():
    """250 vocabulary rows on 4 ranks: chunks of 63, the all-gather output holds 252 (FSDP2
    `padded_sharded_param_size`); the 64 rows of a norm split evenly."""
    spec = spec_from_config(TINY, "tiny", "test")
    units = build_units(spec, make_plan(method="full", sharding="fsdp", gpus=4), gpus=4)
    root = units.root  # embed_tokens [250, 64], norm [64], lm_head [250, 64], bf16
    assert root.padded == (2 * 252 * 64 + 64) * 2
    assert root.full == (2 * 250 * 64 + 64) * 2
    assert root.shard == (2 * 63 * 64 + 16) * 2
    assert root.trainable_shards == (63 * 64, 16, 63 * 64)


def test_4bit_weights_shard_in_their_storage_dtype():
    spec = spec_from_config(TINY, "tiny", "test")
    layer = build_units(spec, make_plan(method="qlora", sharding="fsdp", gpus=2), gpus=2).layers[0]
    q = [p for p in layer.params if p.kind == "quantized_weights"]
    assert {p.itemsize for p in q} == {2}  # bf16 quant_storage: (n + 1) // 4 elements of 2 bytes
    assert q[0].rows == (64 * 64 + 1) // 4
    assert layer.replicated_bytes > 0  # the quant states stay whole on every rank


# Engines ------------------------------------------------------------------------------------------------------

def test_ddp_adds_one_gradient_sized_bucket_set_to_every_phase(llama7b):
    plan = make_plan(method="full", gpus=2)
    one, ddp = single_gpu_estimate(llama7b, plan), estimate_memory(llama7b, plan)
    grads = 2 * llama7b.num_params
    assert {k: ddp.phases[k] - one.phases[k] for k in ("forward", "backward", "optimizer")} == dict.fromkeys(
        ("forward", "backward", "optimizer"), grads)
    assert ddp.phases["load"] == one.phases["load"] + grads  # DDP's constructor allocates the buckets


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_more_gpus_never_need_more_memory(llama7b, method):
    for mode in ("fsdp", "fsdp_grad_op", "zero1", "zero2", "zero3"):
        peaks = [estimate_memory(llama7b, make_plan(method=method, sharding=mode, gpus=n)).peak_bytes
                 for n in (2, 4, 8)]
        assert peaks == sorted(peaks, reverse=True), mode


def test_fsdp_full_finetune_of_7b_on_8_gpus(llama7b):
    """Per GPU: params, gradients and AdamW states sharded 8 ways (2 + 2 + 4 bytes / 8 per parameter), plus one
    unsharded decoder layer, the unsharded root (embeddings + lm_head) and the communication buffers."""
    e = estimate_memory(llama7b, make_plan(method="full", sharding="fsdp", gpus=8))
    psi = llama7b.num_params
    assert e.components.optimizer_states == pytest.approx(4 * psi / 8, rel=1e-3)
    assert e.components.base_weights == pytest.approx(2 * psi / 8, rel=1e-3)
    layer = 2 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096)
    root = 2 * (2 * 32000 * 4096 + 4096)
    assert e.components.unsharded_params in (root, root + layer)
    assert 7 * GiB < e.peak_bytes < 10 * GiB  # vs 63 GiB on one GPU


def test_zero_stages_follow_the_paper(llama7b):
    """Full fine-tuning, bf16 weights, AdamW: after a step a rank holds 2 bytes of weights per parameter plus
    (4 + 8) / N of fp32 master and states (stages 1-2), or (2 + 2 + 4 + 8) / N at stage 3 (+ persistent norms
    and one reduce bucket). ZeRO-2's backward keeps only the gradient partition, not ZeRO-1's full gradients."""
    psi, n = llama7b.num_params, 8
    z = {s: estimate_memory(llama7b, make_plan(method="full", sharding=f"zero{s}", gpus=n)) for s in (1, 2, 3)}
    for s in (1, 2):
        st = z[s].components
        assert st.master_weights == pytest.approx(4 * psi / n, rel=1e-3)
        assert st.optimizer_states == pytest.approx(8 * psi / n, rel=1e-3)
    assert z[2].phases["backward"] < z[1].phases["backward"] - psi  # 2 psi of full gradients vs 2 psi / 8
    assert z[3].phases["optimizer"] == pytest.approx((2 + 2 + 4 + 8 + 4 + 4) * psi / n, rel=0.01)
    assert z[3].peak_bytes < z[2].peak_bytes < z[1].peak_bytes


def test_zero_offload_moves_master_and_states_to_host(llama7b):
    on = estimate_memory(llama7b, make_plan(method="full", sharding="zero2", gpus=4))
    off = estimate_memory(llama7b, make_plan(method="full", sharding="zero2", gpus=4, offload="optimizer"))
    psi = llama7b.num_params
    assert off.host_offload_bytes == pytest.approx((4 + 8 + 4) * psi / 4, rel=1e-3)
    assert on.peak_bytes - off.peak_bytes > (4 + 8) * psi / 4 * 0.99


def test_fsdp_offload_keeps_only_gathered_units_on_the_gpu(llama7b):
    plan = dict(method="full", sharding="fsdp", gpus=8)
    on, off = estimate_memory(llama7b, make_plan(**plan)), estimate_memory(llama7b, make_plan(**plan, offload="params"))
    assert off.host_offload_bytes == pytest.approx((2 + 4 + 2 + 2) * llama7b.num_params / 8, rel=1e-3)
    assert off.components.optimizer_states == 0 and off.phases["optimizer"] < 2**20  # the batch, buffers
    assert off.peak_bytes < on.peak_bytes - 5 * GiB


def test_fsdp_on_one_gpu_copies_the_unit_in_use(llama7b):
    """World size 1: no all-gather buffer (`unshard` returns early), but `wait_for_unshard` still copies the
    sharded data into unsharded parameters: the root's for the whole step, a layer's while it runs."""
    plan = make_plan(method="lora", sharding="fsdp")
    units = build_units(llama7b, plan)
    one, fsdp1 = single_gpu_estimate(llama7b, plan), estimate_memory(llama7b, plan)
    extra = fsdp1.phases["forward"] - one.phases["forward"]
    assert units.root.padded <= extra <= units.root.padded + units.layers[0].padded  # the head or a layer peaks


def test_fsdp_gathers_dpos_whole_reference_model_in_its_forward(llama7b):
    """TRL's `prepare_fsdp` wraps DPO's frozen reference model (no PEFT) with one `fully_shard` call: one unit, so
    its forward all-gathers the whole model (the flat all-gather output, kept until the unit's post-forward, and
    the unsharded parameters): two full copies on every GPU, however many GPUs shard it at rest."""
    dpo = estimate_memory(llama7b, make_plan(method="full", trainer="trl-dpo", seq=128, gpus=8, sharding="fsdp"))
    whole = static_memory(llama7b, make_plan(method="full")).total
    assert dpo.phases["forward"] > 2 * whole
    assert dpo.phases["load"] - estimate_memory(llama7b, make_plan(method="full", seq=128, gpus=8, sharding="fsdp")
                                                ).phases["load"] == whole  # loaded whole, before TRL shards it


def test_fsdp_qlora_fits_70b_on_two_24gb_gpus():
    """The known recipe (Answer.AI's FSDP-QLoRA): Llama-2-70B, 2 x RTX 4090, gradient checkpointing, parameters
    offloaded to the CPU. It fits with offload; without, the 4-bit shard alone is ~17 GiB per GPU."""
    from vramplan.api import estimate

    plan = make_plan(method="qlora", sharding="fsdp", gpus=2, offload="params")
    e = estimate("llama2-70b", plan, gpu="rtx4090")
    assert e.fits and e.host_offload_bytes > 15 * GiB
    plain = estimate("llama2-70b", make_plan(method="qlora"), gpu="rtx4090")
    assert not plain.fits


# CLI ------------------------------------------------------------------------------------------------------------

def test_estimate_json_says_per_gpu(capsys):
    assert main(["estimate", "--model", "llama2-7b", "--method", "full", "--gpus", "4", "--sharding", "zero3",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["gpus"], data["sharding"], data["plan"]["sharding"]) == (4, "zero3", "zero3")
    assert data["peak_bytes"] == max(data["phases"].values())


def test_estimate_table_says_per_gpu_and_host_ram(capsys):
    assert main(["estimate", "--model", "llama2-70b", "--gpus", "2", "--sharding", "fsdp", "--offload", "params",
                 "--gpu", "rtx4090"]) == 0
    out = capsys.readouterr().out
    assert "per GPU (rank 0 of 2, FSDP2 full shard, offload params)" in " ".join(out.split())
    assert "host RAM for offloaded state" in out and "on each of 2 x rtx4090" in out


def test_bad_sharding_combination_is_one_line(capsys):
    assert main(["estimate", "--model", "llama2-7b", "--gpus", "2", "--sharding", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose ddp" in err
