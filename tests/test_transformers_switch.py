"""`--transformers 4|5`: the default comes from the installed package's metadata (never imported), and what
differs between the two majors is pinned where the installed library can be the oracle."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from vramplan.plan import installed_transformers, make_plan


def test_default_is_the_installed_major_without_importing_it():
    code = ("import sys; from vramplan.plan import make_plan; p = make_plan(); "
            "print(p.transformers, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    try:
        major = int(metadata.version("transformers").split(".")[0])
    except metadata.PackageNotFoundError:
        major = 5
    assert out == [str(major if major in (4, 5) else 5), "False"]
    assert installed_transformers() == int(out[0])


def test_checkpointing_default_follows_the_major():
    """transformers 4.57 gradient_checkpointing_enable: {"use_reentrant": True} when given no kwargs; 5.x:
    {"use_reentrant": False}. An explicit choice wins; without checkpointing there is nothing to choose."""
    assert make_plan(transformers=4).ckpt_reentrant is True
    assert make_plan(transformers=5).ckpt_reentrant is False
    assert make_plan(transformers=4, ckpt_reentrant=False).ckpt_reentrant is False
    assert make_plan(transformers=4, grad_ckpt=False).ckpt_reentrant is False
    assert make_plan(transformers=5, ckpt_reentrant=True).ckpt_reentrant is True


def test_installed_library_default_matches_the_plan():
    """The oracle: the installed transformers' own `gradient_checkpointing_enable()` without kwargs."""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    from vramplan.models import preset_config

    cfg = {**preset_config("llama3.1-8b"), "num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 96,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    model.gradient_checkpointing_enable()
    layer = next(m for m in model.modules() if getattr(m, "_gradient_checkpointing_func", None) is not None)
    library = layer._gradient_checkpointing_func.keywords.get("use_reentrant", True)  # torch's default: True
    assert make_plan(transformers=installed_transformers()).ckpt_reentrant is library


def test_moe_under_transformers_4_quantizes_the_experts():
    """Each expert an nn.Linear under 4.x, quantized under QLoRA (the rules: tests/test_moe_v4.py)."""
    from vramplan.api import estimate
    from vramplan.models import resolve_model

    v4 = estimate(resolve_model("mixtral-8x7b"), make_plan(method="qlora", transformers=4))
    assert v4.components.quantized_weights > 20 * 2**30 and not v4.notes


def test_cli_flags(capsys):
    from vramplan.cli import main

    assert main(["estimate", "--model", "llama2-7b", "--transformers", "4", "--json"]) == 0
    assert '"ckpt_reentrant": true' in capsys.readouterr().out
    assert main(["estimate", "--model", "llama2-7b", "--transformers", "4", "--no-ckpt-reentrant", "--json"]) == 0
    assert '"ckpt_reentrant": false' in capsys.readouterr().out
