"""`vramplan check` and `--config` through `vramplan.cli.main`: a config and the equivalent flags give the
same estimate; the preflight prints the plan's sources, the verdict and one line per ignored field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vramplan.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"


def _json(capsys, *argv: str) -> dict:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    return json.loads(out)


SMALL = "base_model: Qwen/Qwen2.5-0.5B\nadapter: lora\nlora_r: 8\nsequence_len: 256\nbf16: true\nlearning_rate: 0.001\n"


@pytest.fixture
def small(tmp_path) -> str:
    path = tmp_path / "small.yml"
    path.write_text(SMALL)
    return str(path)


def test_small_config_and_equivalent_flags_give_identical_estimates(capsys, small):
    """axolotl defaults made explicit: batch 1, accumulation 1, no checkpointing, sdpa, adamw_torch_fused."""
    from_config = _json(capsys, "estimate", "--json", "--config", small)
    from_flags = _json(capsys, "estimate", "--json", "--model", "qwen2.5-0.5b", "--method", "lora", "--rank", "8",
                       "--param-dtype", "bf16", "--lora-dropout", "0", "--seq", "256", "--batch", "1", "--grad-accum",
                       "1", "--no-grad-ckpt", "--attn", "sdpa", "--optimizer", "adamw_fused")
    assert from_config == from_flags


@pytest.mark.slow
@pytest.mark.parametrize("config, flags", [
    (["axolotl-llama31-8b-qlora.yml"],
     ["--model", "llama3.1-8b", "--method", "qlora", "--param-dtype", "bf16", "--rank", "16", "--alpha", "32",
      "--lora-dropout", "0.05", "--targets", "all-linear", "--quant", "nf4", "--double-quant", "--compute-dtype",
      "bf16", "--quant-storage", "bf16", "--seq", "2048", "--batch", "2", "--grad-accum", "8", "--grad-ckpt",
      "--ckpt-reentrant", "--attn", "flash_attention_2", "--optimizer", "paged_adamw_8bit"]),
    (["llamafactory-qwen25-7b-qlora.yaml"],
     ["--model", "Qwen/Qwen2.5-7B-Instruct", "--method", "qlora", "--param-dtype", "bf16", "--rank", "16",
      "--alpha", "32", "--targets", "all-linear", "--quant", "nf4", "--compute-dtype", "bf16", "--quant-storage",
      "bf16", "--seq", "2048", "--batch", "2", "--grad-accum", "8", "--ckpt-reentrant", "--attn", "sdpa",
      "--optimizer", "adamw_fused", "--no-kbit-upcast"]),
    (["hf-training-args.json", "adapter_config.json", "bnb_config.json", "accelerate-fsdp2.yaml"],
     ["--model", "meta-llama/Llama-3.1-8B", "--method", "qlora", "--rank", "16", "--alpha", "32", "--lora-dropout",
      "0.05", "--targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--quant", "nf4",
      "--compute-dtype", "bf16", "--quant-storage", "uint8", "--seq", "1024", "--batch", "4", "--grad-accum", "4",
      "--optimizer", "paged_adamw_8bit", "--gpus", "4", "--sharding", "fsdp"]),
])
def test_config_and_equivalent_flags_give_identical_estimates(capsys, config, flags):
    from_config = _json(capsys, "estimate", "--gpu", "rtx4090", "--json",
                        *[a for name in config for a in ("--config", str(EXAMPLES / name))])
    from_flags = _json(capsys, "estimate", "--gpu", "rtx4090", "--json", *flags)
    assert from_config == from_flags


def test_flags_override_the_config(capsys, small):
    base = _json(capsys, "estimate", "--json", "--config", small)
    more = _json(capsys, "estimate", "--json", "--config", small, "--seq", "512")
    assert base["plan"]["seq"] == 256 and more["plan"]["seq"] == 512 and more["peak_bytes"] > base["peak_bytes"]


def test_check_prints_plan_sources_verdict_and_ignored_fields(capsys, small):
    code = main(["check", small, "--gpu", "rtx4090", "--no-calibration"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert "sequence_len" in out and "micro_batch_size (default)" in out and ": fits" in out
    assert out.endswith("ignored: learning_rate\n")


def test_check_exit_code_1_when_it_does_not_fit(capsys, small):
    code = main(["check", small, "--gpu", "rtx3060-12gb", "--batch", "64", "--seq", "4096", "--no-calibration"])
    out, _ = capsys.readouterr()
    assert code == 1 and "does not" in out and "headroom -" in out


def test_check_json_and_bad_file(capsys, tmp_path, small):
    data = _json(capsys, "check", small, "--json")
    assert data["reading"]["format"] == "axolotl" and data["estimate"]["plan"]["method"] == "lora"
    bad = tmp_path / "bad.yml"
    bad.write_text("base_model: x\nadapter: [lora\n")
    code = main(["check", str(bad)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and "bad.yml:" in err and "invalid YAML" in err
