"""Bad input: one line on stderr, exit code 2, never a traceback, a hang or a negative number (issue 10).

One parametrized test per class of defect; each case is one the issue reported or a sibling of it. The CLI runs
in-process (`vramplan.cli.main`), so every case takes milliseconds.
"""

from __future__ import annotations

import json

import pytest

from vramplan.cli import main
from vramplan.models import preset_config, resolve_model

LLAMA = preset_config("llama-7b")
MIXTRAL = preset_config("mixtral-8x7b")
QWEN_MOE = preset_config("qwen3-30b-a3b")


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_input_error(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


# config.json as physics -------------------------------------------------------------------------------------

CONFIG_CASES = [
    # strict types: a string is not a number, a bool is not an int, a float is not a count
    (LLAMA, {"intermediate_size": "big"}, "intermediate_size must be an integer"),
    (MIXTRAL, {"num_local_experts": "eight"}, "num_local_experts must be an integer"),
    (LLAMA, {"hidden_size": True}, "hidden_size must be an integer"),
    (LLAMA, {"num_hidden_layers": 32.0}, "num_hidden_layers must be an integer"),
    (LLAMA, {"tie_word_embeddings": "no"}, "tie_word_embeddings must be true or false"),
    (LLAMA, {"attention_bias": 1}, "attention_bias must be true or false"),
    # positive sizes (negative memory that "fits")
    (LLAMA, {"intermediate_size": -1}, "intermediate_size must be an integer from 1"),
    (LLAMA, {"intermediate_size": 0}, "intermediate_size must be an integer from 1"),
    (MIXTRAL, {"num_local_experts": -8}, "num_local_experts must be an integer from 1"),
    (LLAMA, {"vocab_size": 0}, "vocab_size must be an integer from 1"),
    # bounded sizes: nothing hangs
    (LLAMA, {"num_hidden_layers": 10_000_000}, "num_hidden_layers must be an integer from 1 to 4096"),
    (LLAMA, {"hidden_size": 10**12}, "hidden_size must be an integer from 1"),
    # divisibility
    (LLAMA, {"num_key_value_heads": 5}, "num_key_value_heads (5) must divide num_attention_heads (32)"),
    (LLAMA, {"num_attention_heads": 30}, "num_attention_heads (30) must divide hidden_size (4096)"),
    (MIXTRAL, {"num_experts_per_tok": 9}, "num_experts_per_tok (9) exceeds the expert count (8)"),
    (QWEN_MOE, {"num_experts_per_tok": 129}, "exceeds the expert count (128)"),
    # what the family's inventory reads must be there
    (MIXTRAL, {"num_local_experts": None}, "missing num_local_experts"),
    (LLAMA, {"intermediate_size": None}, "missing intermediate_size"),
    # lists and factors
    (QWEN_MOE, {"mlp_only_layers": [99]}, "mlp_only_layers must be a list of layer indices"),
    (LLAMA, {"partial_rotary_factor": float("inf")}, "partial_rotary_factor must be a finite number"),
    (LLAMA, {"model_type": 7}, "model_type must be a string"),
    # a non-native wrapper's text_config must be an object
    ({"model_type": "llava", "text_config": "oops"}, {}, "text_config must be a JSON object"),
]


@pytest.mark.parametrize("base, change, message", CONFIG_CASES, ids=[c[2][:40] for c in CONFIG_CASES])
def test_a_config_that_is_not_physics_is_one_line(tmp_path, capsys, base, change, message):
    cfg = {k: v for k, v in {**base, **change}.items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    code, _, err = run(["estimate", "--model", str(path)], capsys)
    assert_one_line_input_error(code, err, message)


def test_head_dim_given_need_not_divide_hidden(tmp_path):
    """Gemma-2 2B: 8 heads of 256 on a 2304-wide model; head_dim given, so no divisibility rule applies."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(preset_config("gemma2-2b")))
    assert resolve_model(str(path)).head_dim == 256


# plan numbers: documented ranges --------------------------------------------------------------------------

PLAN_CASES = [
    (["--alpha", "-1"], "alpha"), (["--alpha", "nan"], "alpha"), (["--alpha", "inf"], "alpha"),
    (["--alpha", "0"], "alpha"), (["--rank", "1000000000000"], "rank"), (["--rank", "0"], "rank"),
    (["--seq", "99999999999"], "seq"), (["--batch", "0"], "batch"), (["--batch", "10000000"], "batch"),
    (["--grad-accum", "99999999999"], "grad_accum"), (["--gpus", "0"], "gpus"),
    (["--gpus", "99999999999", "--sharding", "fsdp"], "gpus"), (["--lora-dropout", "nan"], "lora_dropout"),
    (["--lora-dropout", "1e309"], "lora_dropout"), (["--lora-dropout", "-0.1"], "lora_dropout"),
]


@pytest.mark.parametrize("flags, field", PLAN_CASES, ids=[" ".join(c[0]) for c in PLAN_CASES])
def test_plan_numbers_out_of_range_are_one_line(capsys, flags, field):
    code, _, err = run(["estimate", "--model", "llama-7b", "--method", "lora", *flags], capsys)
    assert_one_line_input_error(code, err, field)


# suggest's own flags and bounded searches -----------------------------------------------------------------

SUGGEST_CASES = [
    (["--host-ram", "nan"], "--host-ram"), (["--host-ram", "inf"], "--host-ram"),
    (["--host-ram", "1e309"], "--host-ram"), (["--host-ram", "-4"], "--host-ram"),
    (["--effective-batch", "1000000000000"], "--effective-batch"), (["--effective-batch", "0"], "--effective-batch"),
    (["--grad-accum", "99999999999"], "grad_accum"), (["--min-seq", "1000000000000"], "--min-seq"),
    (["--min-seq", "0"], "--min-seq"), (["--seq", "1000000000000"], "seq"), (["--top", "0"], "--top"),
    (["--top", "1000000000"], "--top"), (["--headroom", "nan"], "--headroom"), (["--headroom", "1"], "--headroom"),
    (["--gpus", "99999999999"], "--gpus"),
]


@pytest.mark.parametrize("flags, word", SUGGEST_CASES, ids=[" ".join(c[0]) for c in SUGGEST_CASES])
def test_suggest_flags_out_of_range_are_one_line(capsys, flags, word):
    code, _, err = run(["suggest", "--model", "llama-7b", "--gpu", "rtx4090", *flags], capsys)
    assert_one_line_input_error(code, err, word)


def test_a_minimum_sequence_beyond_the_model_is_an_input_error_not_nothing_fits(capsys):
    code, _, err = run(["suggest", "--model", "llama-7b", "--gpu", "rtx4090", "--min-seq", "4096"], capsys)
    assert_one_line_input_error(code, err, "--min-seq", "2048")


def test_the_micro_batch_ladder_is_bounded_at_the_largest_effective_batch():
    """The micro-batch ladder is the divisors of the per-GPU batch, found up to its square root (not by trial up
    to the batch): at most 240 of them within --effective-batch's range, so every search stays bounded."""
    from vramplan.hardware import resolve_gpu
    from vramplan.search_space import EFFECTIVE_BATCH_RANGE, Probe, Request, divisors

    assert divisors(720720) == [d for d in range(1, 720721) if 720720 % d == 0]
    assert divisors(1) == [1] and divisors(49) == [1, 7, 49]
    req = Request(model=resolve_model("qwen2.5-0.5b"), gpu=resolve_gpu("h100-sxm"),
                  effective_batch=EFFECTIVE_BATCH_RANGE[1])
    assert len(Probe(req).batch_choices()) == 21  # 2**20


# names and lists ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("models", [",", " , ", ""])
def test_compare_with_no_model_is_an_input_error(capsys, models):
    code, out, err = run(["compare", "--model", models], capsys)
    assert_one_line_input_error(code, err, "model")
    assert out == ""


def test_a_config_file_is_named_by_its_own_name_not_its_folder(tmp_path):
    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    (folder / "tiny.json").write_text(json.dumps(LLAMA))
    (folder / "saved.json").write_text(json.dumps({**LLAMA, "_name_or_path": "meta-llama/Llama-2-7b-hf"}))
    assert resolve_model(str(folder)).name == "my-llama"  # a folder: the folder is the model
    assert resolve_model(str(folder / "config.json")).name == "my-llama"  # HF's layout: config.json in it
    assert resolve_model(str(folder / "tiny.json")).name == "tiny"  # any other file: its stem
    assert resolve_model(str(folder / "saved.json")).name == "meta-llama/Llama-2-7b-hf"  # transformers' own


def test_an_edited_config_file_is_read_again(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA))
    assert resolve_model(str(path)).num_layers == 32
    path.write_text(json.dumps({**LLAMA, "num_hidden_layers": 2, "padding": " " * 8}))
    assert resolve_model(str(path)).num_layers == 2


# GPU profiles and what the GPU can run --------------------------------------------------------------------

@pytest.mark.parametrize("line, field", [
    ("fp16_tflops_dense = inf", "fp16_tflops_dense"), ("fp32_tflops = nan", "fp32_tflops"),
    ("bf16_tflops_dense = inf", "bf16_tflops_dense"), ("memory_bytes = 0", "memory_bytes"),
])
def test_gpu_profile_numbers_must_be_finite(tmp_path, capsys, line, field):
    text = (_profile_text().replace(line.split(" = ")[0] + " = ", "#", 1) + line + "\n")
    (tmp_path / "mygpu.toml").write_text(text)
    code, _, err = run(["gpus", "--gpu-dir", str(tmp_path)], capsys)
    assert_one_line_input_error(code, err, "mygpu.toml", field)


def _profile_text() -> str:
    from vramplan.hardware import _builtin_dir

    text = _builtin_dir().joinpath("rtx4090.toml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith(("slug", "name", "aliases"))]
    return "\n".join(['name = "My GPU"', 'slug = "mygpu"', *lines]) + "\n"


@pytest.mark.parametrize("flags, words", [
    (["--gpu", "t4", "--method", "lora", "--param-dtype", "bf16"], ("t4", "bf16", "8.0")),
    (["--gpu", "t4", "--method", "full", "--param-dtype", "fp32", "--mixed-precision", "bf16"], ("t4", "bf16")),
    (["--gpu", "v100-16gb", "--method", "qlora", "--param-dtype", "fp16", "--compute-dtype", "bf16"],
     ("v100-16gb", "bf16")),
    (["--gpu", "t4", "--param-dtype", "fp16", "--attn", "flash_attention_2"], ("t4", "flash_attention_2", "8.0")),
    (["--gpu", "p100", "--param-dtype", "fp16", "--attn", "flash_attention_2"], ("p100", "flash_attention_2")),
])
def test_what_the_gpu_cannot_run_is_an_input_error(capsys, flags, words):
    code, out, err = run(["estimate", "--model", "llama-7b", *flags], capsys)
    assert_one_line_input_error(code, err, *words)
    assert "fits" not in out


@pytest.mark.parametrize("gpu", ["a100-80gb", "rtx4090", "h100-sxm", "mi300x", "rx7900xtx", "mi250x"])
def test_bf16_and_flash_attention_2_run_on_ampere_and_newer_and_on_rocm(gpu):
    from vramplan.hardware import check_runs_on, resolve_gpu
    from vramplan.plan import make_plan

    for method in ("full", "lora", "qlora"):
        check_runs_on(make_plan(method=method, param_dtype="bf16", attn="flash_attention_2"), resolve_gpu(gpu))


def test_seq_beyond_the_model_context_is_a_warning_not_an_error(capsys):
    code, _, err = run(["estimate", "--model", "llama-7b", "--seq", "8192"], capsys)
    assert code == 0
    assert "2048" in err and "warning" in err.lower() and len(err.strip().splitlines()) == 1
    code, _, err = run(["estimate", "--model", "llama-7b", "--seq", "2048"], capsys)
    assert code == 0 and not err


def test_a_blocker_sentence_gives_each_plan_its_own_size():
    """'full fine-tuning needs at least 79.7 GiB (smallest GPU that fits: rtx-a6000)' mixed the T4's fp32+fp16
    plan with the bf16 plan that fits the 48 GB card: each size now goes with its own version and GPU."""
    from vramplan.plan import make_plan
    from vramplan.report.advice import _blocker_words

    fp32 = make_plan(method="full", param_dtype="fp32", mixed_precision="fp16").to_dict()
    bf16 = make_plan(method="full").to_dict()

    class Blocker:
        plan, gpu_bytes, host_bytes, host_fits = fp32, 80 * 2**30, 0, True
        smallest_gpu, smallest_gpu_bytes, smallest_gpu_plan = "rtx-a6000", 40 * 2**30, bf16

    class Advice:
        gpus, gpu = 1, "t4"

    words = _blocker_words(Advice, Blocker)
    assert "80.0 GiB in fp32 weights with fp16 autocast on the t4" in words
    assert "in bf16 it takes 40.0 GiB (smallest GPU that fits: rtx-a6000)" in words
