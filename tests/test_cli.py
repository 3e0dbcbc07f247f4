"""The CLI: listings, JSON contracts, and bad input as one line on stderr with exit code 2 (never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vramplan.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_table_and_json(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "llama2-7b" in out
    code, out, _ = run(capsys, "models", "--json")
    slugs = {m["slug"] for m in json.loads(out)}
    assert code == 0 and {"llama-7b", "llama3.1-405b", "qwen3-30b-a3b", "phi3-mini", "gemma2-27b"} <= slugs


def test_gpus_table_and_json(capsys):
    code, out, _ = run(capsys, "gpus", "--json")
    gpus = {g["slug"]: g for g in json.loads(out)}
    assert code == 0 and len(gpus) >= 25 and gpus["rtx4090"]["memory_bytes"] == 24 * 2**30
    code, out, _ = run(capsys, "gpus")
    assert code == 0 and "rtx4090" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["estimate", "--model", "llama-7"], "unknown model 'llama-7'"),
        (["estimate", "--model", "llama2-7b", "--gpu", "rtx4909"], "rtx4090"),
        (["estimate", "--model", "llama2-7b", "--method", "full", "--rank", "8"], "--rank"),
        (["estimate", "--model", "llama2-7b", "--method", "lora", "--quant", "nf4"], "--quant"),
        (["estimate", "--model", "llama2-7b", "--seq", "0"], "seq"),
        (["estimate", "--model", "llama2-7b", "--batch", "-1"], "batch"),
        (["estimate", "--model", "llama2-7b", "--seq", "abc"], "invalid int value"),
        (["estimate", "--model", "llama2-7b", "--targets", "q_proj,foo"], "foo"),
        (["estimate", "--model", "llama2-7b", "--optimizer", "adam"], "unknown optimizer 'adam' (did you mean adamw"),
        (["estimate", "--model", "llama2-7b", "--method", "lora", "--no-double-quant"], "--double-quant"),
        (["estimate", "--model", "llama2-7b", "--mixed-precision", "bf16"], "--mixed-precision"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    try:  # argparse errors exit (SystemExit), vramplan's errors return the code
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"model_type": "llama"}', "missing"),
    ('{"model_type": "llama", "hidden_size": -4, "num_hidden_layers": 2, "num_attention_heads": 2, '
     '"vocab_size": 10}', "hidden_size"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_config_files(tmp_path, capsys, content, needle):
    path = tmp_path / "config.json"
    path.write_text(content)
    code, _, err = run(capsys, "estimate", "--model", str(path))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_folder_without_config(tmp_path, capsys):
    code, _, err = run(capsys, "estimate", "--model", str(tmp_path))
    assert code == 2 and "no config.json" in err


def test_unsupported_architecture_without_transformers(tmp_path, capsys, monkeypatch):
    import vramplan.models as models

    monkeypatch.setattr(models, "_meta_fallback_available", lambda: False)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "vocab_size": 100}))
    code, _, err = run(capsys, "estimate", "--model", str(path))
    assert code == 2 and "no native spec" in err and "llama" in err


def test_unknown_architecture_with_transformers(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "not_a_model", "hidden_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "vocab_size": 100}))
    code, _, err = run(capsys, "estimate", "--model", str(path))
    assert code == 2 and "not_a_model" in err and len(err.strip().splitlines()) == 1


def test_model_folder_and_hf_cache(tmp_path, capsys, monkeypatch):
    from vramplan.models import preset_config

    snap = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(preset_config("qwen2.5-0.5b")))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, _ = run(capsys, "estimate", "--model", "acme/tiny", "--json")
    assert code == 0 and json.loads(out)["model"] == "acme/tiny"
    code, out, _ = run(capsys, "estimate", "--model", str(snap), "--json")
    assert code == 0


@pytest.mark.parametrize("alias", ["llama2-7b", "llama-2-7b", "Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"])
def test_aliases_resolve(alias):
    from vramplan.models import resolve_model

    assert resolve_model(alias).name == "llama2-7b"


@pytest.mark.parametrize("argv", [("--help",), ("models",), ("estimate", "--model", "llama2-70b", "--json")])
def test_startup_is_torch_free(argv):
    """Start-up imports no torch; how fast it is, is measured by benchmarks/cli_startup.py (no wall-clock test)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    code = (f"import sys\nfrom vramplan.cli import main\ntry:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    code = "import sys, vramplan.cli, vramplan.estimator, vramplan.api; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_fallback_architecture_is_cached_on_disk(tmp_path):
    """A model_type without a native spec is read through transformers once; the second call reads the disk
    record (keyed by config + transformers version) and imports no torch."""
    pytest.importorskip("transformers")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": 100,
                                  "max_position_embeddings": 128}))
    env = {**os.environ, "VRAMPLAN_CACHE_DIR": str(tmp_path / "cache")}
    code = ("import json, sys\nfrom vramplan.measure.meta_inventory import inventory_from_meta, record_path, "
            f"traits_record\ncfg = json.load(open({str(config)!r}))\ninv = inventory_from_meta(cfg)\n"
            "print(json.dumps({'numel': inv.total_numel, 'traits': traits_record(cfg), 'torch': 'torch' in "
            "sys.modules, 'cached': record_path(cfg).exists()}))")
    first, second = (json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               env=env, check=True, timeout=600).stdout.splitlines()[-1])
                     for _ in range(2))
    assert first["torch"] and first["cached"] and not second["torch"]
    assert (second["numel"], second["traits"]) == (first["numel"], first["traits"])
    assert len(list((tmp_path / "cache" / "specs").glob("*.json"))) == 1
    cli = ("import contextlib, io, sys\nfrom vramplan.cli import main\n"
           "with contextlib.redirect_stdout(io.StringIO()):\n"
           f"    code = main(['estimate', '--model', {str(config)!r}, '--seq', '128', '--json'])\n"
           "assert code == 0 and 'torch' not in sys.modules, (code, 'torch imported')")
    subprocess.run([sys.executable, "-c", cli], env=env, check=True, timeout=600)  # the estimate reads the record
