"""The preset data files: vramplan/presets/<slug>.json and index.toml.

Every JSON must be a config.json transformers accepts, build the real model on the meta device, and
have exactly the parameter count the hub publishes. The pinned counts below are what transformers'
`sum(p.numel() for p in model.parameters())` gives (a tied embedding counts once), each confirmed by a
public figure named in the comment: keras-hub presets' `params`, the hub API's `safetensors.total`
(quoted in public code), a GGUF `general.parameter_count`, or a printed model. The hub API figure for
an old Llama-2 checkpoint also counts the rotary `inv_freq` buffers stored with it, and for
Qwen3-0.6B/1.7B the stored copy of the tied lm_head; those relations are checked exactly too.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PRESETS = resources.files("vramplan.presets")
FAMILIES = {"llama1", "llama2", "llama3", "llama3.1", "llama3.2", "mistral", "mixtral", "qwen2.5", "qwen3",
            "gemma2", "phi3"}
INDEX_KEYS = {"hub_id", "aliases", "family", "params_b", "source"}
# Every field a preset JSON may use: the hub's config.json names for shapes and memory.
JSON_FIELDS = {
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
    "max_sequence_length", "original_max_position_embeddings", "tie_word_embeddings", "rms_norm_eps",
    "rope_theta", "rope_scaling", "attention_bias", "mlp_bias", "torch_dtype", "hidden_act",
    "hidden_activation", "sliding_window", "use_sliding_window", "cache_implementation",
    "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "num_local_experts",
    "num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step", "norm_topk_prob",
    "mlp_only_layers",
}
# slug -> parameters of the meta-built model (tied weights once); source of the figure after each.
PINNED_PARAMS = {
    "llama-7b": 6_738_415_616,  # QLoRA log "all params" for huggyllama/llama-7b
    "llama-13b": 13_015_864_320,  # public LLaMA parameter tables
    "llama-33b": 32_528_943_616,  # pyllama printout of LLaMA-30B
    "llama-65b": 65_285_660_672,  # pyllama printout of LLaMA-65B
    "llama2-7b": 6_738_415_616,  # keras-hub llama2_7b_en
    "llama2-13b": 13_015_864_320,  # HF API, less inv_freq (see HF_API_WITH_INV_FREQ)
    "llama2-70b": 68_976_648_192,  # HF API, less inv_freq
    "llama3-8b": 8_030_261_248,  # keras-hub llama3_8b_en
    "llama3-70b": 70_553_706_496,  # HF API for the same-shaped Llama-3.1-70B / 3.3-70B
    "llama3.1-8b": 8_030_261_248,  # HF API meta-llama/Llama-3.1-8B
    "llama3.1-70b": 70_553_706_496,  # HF API meta-llama/Llama-3.1-70B
    "llama3.1-405b": 405_853_388_800,  # HF API meta-llama/Llama-3.1-405B
    "llama3.2-1b": 1_235_814_400,  # HF API meta-llama/Llama-3.2-1B-Instruct (tied)
    "llama3.2-3b": 3_212_749_824,  # HF API meta-llama/Llama-3.2-3B-Instruct (tied)
    "mistral-7b": 7_241_732_096,  # GGUF general.parameter_count of Mistral-7B
    "mistral-7b-v0.3": 7_248_023_552,  # keras-hub mistral_0.3_7b_en; HF API
    "mixtral-8x7b": 46_702_792_704,  # keras-hub mixtral_8_7b_en; HF API for -Instruct
    "qwen2.5-0.5b": 494_032_768,  # keras-hub qwen2.5_0.5b_en (tied)
    "qwen2.5-1.5b": 1_543_714_304,  # keras-hub qwen2.5_math_1.5b_en; HF API for -Instruct (tied)
    "qwen2.5-3b": 3_085_938_688,  # keras-hub qwen2.5_3b_en (tied)
    "qwen2.5-7b": 7_615_616_512,  # keras-hub qwen2.5_math_7b_en; HF API for -Instruct
    "qwen2.5-14b": 14_770_033_664,  # GGUF n_params of Qwen2.5-14B-Instruct
    "qwen2.5-32b": 32_763_876_352,  # keras-hub qwen2.5_instruct_32b_en
    "qwen2.5-72b": 72_706_203_648,  # keras-hub qwen2.5_instruct_72b_en
    "qwen3-0.6b": 596_049_920,  # keras-hub qwen3_0.6b_en (tied)
    "qwen3-1.7b": 1_720_574_976,  # keras-hub qwen3_1.7b_en (tied)
    "qwen3-4b": 4_022_468_096,  # keras-hub qwen3_4b_en; HF API (tied)
    "qwen3-8b": 8_190_735_360,  # keras-hub qwen3_8b_en; HF API
    "qwen3-14b": 14_768_307_200,  # keras-hub qwen3_14b_en
    "qwen3-32b": 32_762_123_264,  # keras-hub qwen3_32b_en; HF API
    "qwen3-30b-a3b": 30_532_122_624,  # keras-hub qwen3_moe_30b_a3b_en
    "gemma2-2b": 2_614_341_888,  # HF API google/gemma-2-2b-it (tied)
    "gemma2-9b": 9_241_705_984,  # keras-hub gemma2_9b_en (tied)
    "gemma2-27b": 27_227_128_320,  # keras-hub gemma2_27b_en (tied)
    "phi3-mini": 3_821_079_552,  # keras-hub phi3_mini_4k_instruct_en; HF API
    "phi3-medium": 13_960_238_080,  # published fine-tuning table for Phi-3-medium-4k-instruct
}
# HF API safetensors.total of checkpoints that also store one rotary inv_freq (head_dim / 2) per layer.
HF_API_WITH_INV_FREQ = {"llama2-7b": 6_738_417_664, "llama2-13b": 13_015_866_880, "llama2-70b": 68_976_653_312}
# HF API safetensors.total of tied checkpoints that store lm_head as well as the embedding.
HF_API_WITH_TIED_COPY = {"qwen3-0.6b": 751_632_384, "qwen3-1.7b": 2_031_739_904}
# Nominal size vs real count: the widest gaps are "2B" = 2.61B (gemma2-2b) and "1B" = 1.24B (llama3.2-1b).
NOMINAL_BAND = (0.9, 1.35)


@cache
def index() -> dict[str, dict[str, Any]]:
    return tomllib.loads(PRESETS.joinpath("index.toml").read_text(encoding="utf-8"))


@cache
def preset(slug: str) -> dict[str, Any]:
    return json.loads(PRESETS.joinpath(f"{slug}.json").read_text(encoding="utf-8"))


def json_slugs() -> set[str]:
    return {entry.name.removesuffix(".json") for entry in PRESETS.iterdir() if entry.name.endswith(".json")}


SLUGS = sorted(index())


# --- The data files on their own (no torch, no transformers) -----------------------------------------


def test_index_and_json_files_match_one_to_one():
    assert set(index()) == json_slugs()
    assert set(PINNED_PARAMS) == set(index()), "pin a parameter count for every preset"


@pytest.mark.parametrize("slug", SLUGS)
def test_index_entry_is_complete(slug):
    entry = index()[slug]
    assert slug == slug.lower() and " " not in slug
    assert set(entry) == INDEX_KEYS
    assert entry["family"] in FAMILIES
    assert isinstance(entry["params_b"], (int, float)) and entry["params_b"] > 0
    assert entry["source"].strip()
    assert entry["hub_id"].count("/") == 1
    assert entry["hub_id"].lower() in {alias.lower() for alias in entry["aliases"]}


def test_aliases_are_unique_case_insensitively():
    owner: dict[str, str] = {slug: slug for slug in SLUGS}
    for slug in SLUGS:
        for alias in index()[slug]["aliases"]:
            assert alias == alias.strip() and alias, f"{slug}: bad alias {alias!r}"
            key = alias.lower()
            assert key not in owner, f"alias {alias!r} of {slug} collides with {owner[key]}"
            owner[key] = slug


def test_required_spellings_resolve():
    owner = {alias.lower(): slug for slug in SLUGS for alias in index()[slug]["aliases"]}
    expected = {
        "llama-2-7b": "llama2-7b", "Llama-2-7b-hf": "llama2-7b", "meta-llama/Llama-2-7b-hf": "llama2-7b",
        "meta-llama/Meta-Llama-3-8B": "llama3-8b", "meta-llama/Llama-3.1-8B": "llama3.1-8b",
        "Qwen/Qwen2.5-7B": "qwen2.5-7b", "mistralai/Mistral-7B-v0.1": "mistral-7b",
        "google/gemma-2-9b": "gemma2-9b", "huggyllama/llama-30b": "llama-33b",
        "microsoft/Phi-3-mini-4k-instruct": "phi3-mini", "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b",
    }
    for spelling, slug in expected.items():
        assert owner[spelling.lower()] == slug, spelling


@pytest.mark.parametrize("slug", SLUGS)
def test_json_uses_hub_field_names_only(slug):
    cfg = preset(slug)
    assert set(cfg) <= JSON_FIELDS, f"unknown fields {set(cfg) - JSON_FIELDS}"
    for field in ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "vocab_size", "max_position_embeddings", "torch_dtype"):
        assert field in cfg, field
    assert cfg["torch_dtype"] in {"float32", "float16", "bfloat16"}
    assert cfg.get("rope_scaling", "absent") is not None, "leave a null rope_scaling out"


# --- transformers accepts every JSON as written --------------------------------------------------------


def _as_loaded(config: Any, field: str, value: Any, cfg: dict[str, Any]) -> tuple[Any, Any]:
    """(what transformers 5 holds for `field`, what it should hold) after it renamed fields on load."""
    if field == "torch_dtype":
        return str(config.dtype), f"torch.{value}"
    if field == "rope_theta":
        return config.rope_parameters["rope_theta"], value
    if field == "rope_scaling":
        return {key: config.rope_parameters.get(key) for key in value}, value
    if field == "sliding_window" and cfg.get("use_sliding_window") is False:
        return config.sliding_window, None  # Qwen2/Qwen3 drop the window when it is switched off
    return getattr(config, field), value


def load_config(slug: str) -> Any:
    transformers = pytest.importorskip("transformers")
    kwargs = dict(preset(slug))
    return transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


@pytest.mark.parametrize("slug", SLUGS)
def test_transformers_parses_config_as_written(slug):
    config = load_config(slug)
    cfg = preset(slug)
    assert config.model_type == cfg["model_type"]
    for field, value in cfg.items():
        if field == "model_type":
            continue
        held, wanted = _as_loaded(config, field, value, cfg)
        assert held == wanted, f"{field}: {held!r} != {wanted!r}"


# --- The real model on the meta device -----------------------------------------------------------------


@cache
def meta_model(slug: str) -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(load_config(slug))


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("slug", SLUGS)
def test_meta_model_has_the_published_parameter_count(slug):
    model = meta_model(slug)
    assert type(model).__name__ == preset(slug)["architectures"][0]
    count = n_params(model)
    assert count == PINNED_PARAMS[slug]
    low, high = NOMINAL_BAND
    assert low <= count / (index()[slug]["params_b"] * 1e9) <= high


@pytest.mark.slow
@pytest.mark.parametrize("slug", sorted(HF_API_WITH_INV_FREQ))
def test_hub_count_of_old_llama2_checkpoints_includes_inv_freq(slug):
    cfg = preset(slug)
    inv_freq = cfg["num_hidden_layers"] * (cfg["hidden_size"] // cfg["num_attention_heads"]) // 2
    assert n_params(meta_model(slug)) + inv_freq == HF_API_WITH_INV_FREQ[slug]


@pytest.mark.slow
@pytest.mark.parametrize("slug", sorted(HF_API_WITH_TIED_COPY))
def test_hub_count_of_tied_qwen3_checkpoints_includes_lm_head_copy(slug):
    cfg = preset(slug)
    assert n_params(meta_model(slug)) + cfg["vocab_size"] * cfg["hidden_size"] == HF_API_WITH_TIED_COPY[slug]


@pytest.mark.slow
@pytest.mark.parametrize("slug", SLUGS)
def test_tied_embeddings_and_qkv_bias_are_as_the_family_has_them(slug):
    model = meta_model(slug)
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    # Gemma-2's config.json has no tie_word_embeddings: Gemma2Config ties by default.
    assert tied == preset(slug).get("tie_word_embeddings", preset(slug)["model_type"] == "gemma2")
    attention = model.model.layers[0].self_attn
    if preset(slug)["model_type"] == "qwen2":  # Qwen2 hard-codes q/k/v biases; no config field says so
        assert attention.q_proj.bias is not None and attention.o_proj.bias is None
    elif hasattr(attention, "q_proj"):
        assert attention.q_proj.bias is None
