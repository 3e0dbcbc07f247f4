"""peft `modules_to_save` pinned to the real peft at small size: the trainable copies' sizes and dtypes
(`ModulesToSaveWrapper.update`: `copy.deepcopy`, no adapter cast), and whole traced steps (the oracle is the
step transformers + peft + torch run under the tracker, never the estimator)."""

from __future__ import annotations

import pytest

from vramplan.errors import PlanError
from vramplan.models import preset_config, spec_from_config
from vramplan.plan import make_plan

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

SMALL = {"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 8192}


def _cfg() -> dict:
    return {**preset_config("llama3.1-8b"), **SMALL}  # untied embeddings


def _peft_trainable(cfg: dict, saved: list[str], upcast: bool) -> list[tuple[int, int]]:
    """(numel, element size) of every trainable tensor peft makes, sorted."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
    if upcast:  # the cast QLoRA's preparation applies to every non-4-bit parameter
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"],
                                                  modules_to_save=saved, task_type="CAUSAL_LM"))
    return sorted((p.numel(), p.element_size()) for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("method", "saved"), [("lora", "embed_tokens,lm_head"), ("lora", "lm_head"),
                                               ("qlora", "embed_tokens")])
def test_saved_copies_match_peft(method, saved):
    """The copies keep the base dtype (bf16, or fp32 after the kbit upcast); the adapters stay fp32."""
    from vramplan.estimator.weights import static_memory

    cfg = _cfg()
    st = static_memory(spec_from_config(cfg, "tiny", "test"),
                       make_plan(method=method, rank=8, targets="q_proj,v_proj", modules_to_save=saved))
    assert sorted(zip(st.trainable_numels, st.dtypes)) == _peft_trainable(cfg, saved.split(","),
                                                                           upcast=method == "qlora")


def test_optimizer_states_follow_each_tensors_dtype():
    """torch AdamW's `zeros_like(param)` states: bf16 for a bf16 copy, fp32 for the adapters."""
    from vramplan.estimator.optimizer import optimizer_memory

    plan = make_plan(method="lora", optimizer="adamw")
    opt = optimizer_memory(plan, (100, 1000), (4, 2))
    assert opt.states_bytes == 2 * (100 * 4 + 1000 * 2) and opt.step_temp_bytes == 100 * 4 + 1000 * 2


@pytest.mark.parametrize("options", [
    {"method": "lora", "modules_to_save": "embed_tokens"},
    {"method": "lora", "modules_to_save": "lm_head", "optimizer": "adamw"},
    {"method": "lora", "modules_to_save": "embed_tokens", "grad_ckpt": False},
    {"method": "qlora", "modules_to_save": "lm_head,embed_tokens"},
])
@pytest.mark.slow
def test_traced_step_matches_estimate(options):
    """The embedding copy's dense gradient, the trainable head's saved input and weight gradient, and the
    copies' states, against a traced step of the real libraries (each phase within 0.1%)."""
    from vramplan.api import estimate
    from vramplan.measure.grid import PHASE_KEYS
    from vramplan.measure.trainer import measure_step

    cfg = _cfg()
    plan = make_plan(seq=256, **options)
    step = measure_step(cfg, plan, trace=True)
    est = estimate(spec_from_config(cfg, "tiny", "test"), plan)
    phases = est.traced_phases or est.phases
    for phase, key in PHASE_KEYS.items():
        assert phases[phase] == pytest.approx(getattr(step, key), rel=1e-3), phase


def test_plan_refusals_are_one_line():
    with pytest.raises(PlanError, match="embed_tokens, lm_head"):
        make_plan(method="lora", modules_to_save="score")
    with pytest.raises(PlanError, match="lora/qlora"):
        make_plan(method="full", modules_to_save="lm_head")
    with pytest.raises(PlanError, match="several GPUs"):
        make_plan(method="lora", modules_to_save="lm_head", gpus=2)
    assert make_plan(method="lora", modules_to_save=" lm_head, embed_tokens").modules_to_save == \
        "embed_tokens,lm_head"


def test_tied_embeddings_are_refused():
    from vramplan.api import estimate

    tied = spec_from_config({**_cfg(), "tie_word_embeddings": True}, "tiny-tied", "test")
    with pytest.raises(PlanError, match="tied embeddings"):
        estimate(tied, make_plan(method="lora", modules_to_save="lm_head"))


def test_cli_flag_reaches_the_estimate(capsys):
    from vramplan.cli import main

    assert main(["estimate", "--model", "llama3.1-8b", "--method", "lora", "--modules-to-save", "lm_head",
                 "--json"]) == 0
    assert '"modules_to_save": "lm_head"' in capsys.readouterr().out


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("adapter_config.json", ('{"peft_type": "LORA", "base_model_name_or_path": "Qwen/Qwen2.5-0.5B", '
                             '"modules_to_save": ["lm_head", "model.embed_tokens"]}'), "embed_tokens,lm_head"),
    ("config.yml", "base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nlora_modules_to_save: [embed_tokens]\n",
     "embed_tokens"),
    ("config.yml", "model_name_or_path: Qwen/Qwen2.5-7B\nstage: sft\nadditional_target: lm_head,embed_tokens\n",
     "embed_tokens,lm_head"),
    ("config.yml", ("model_name_or_path: EleutherAI/pythia-1.4b\nuse_peft: true\n"
                    "lora_modules_to_save: [embed_out]\noutput_dir: out\n"), "lm_head"),
])
def test_config_files_map_modules_to_save(tmp_path, name, text, expected):
    """peft's adapter_config, axolotl's lora_modules_to_save, LLaMA-Factory's additional_target, TRL's
    lora_modules_to_save: an embedding or output head becomes the plan's role name."""
    from vramplan.configs import read_config

    path = tmp_path / name
    path.write_text(text)
    assert read_config(path, None).plan_options["modules_to_save"] == expected
