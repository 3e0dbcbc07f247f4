"""`compare --infer-context`: each method's fine-tuned model generating, as `vramplan infer` prints it for the same
served model (full: 16-bit; LoRA: merged into the 16-bit base; QLoRA: the 4-bit base with the unmerged adapter).
`vramplan.inference` itself is checked against transformers' generate in tests/test_inference.py; this pins the
wiring: the right weight format, adapter, dtype and shapes reach it, and bad values are one-line errors."""

from __future__ import annotations

import json

import pytest

from vramplan.cli import main


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]):
    main([*argv, "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("gpu", [None, "rtx4090"])
def test_column_is_what_infer_prints(capsys: pytest.CaptureFixture[str], gpu: str | None) -> None:
    where = ["--gpu", gpu] if gpu else []
    rows = _json(["compare", "--model", "llama2-7b", "--rank", "16", "--targets", "all-linear", "--infer-context",
                  "4096", "--infer-batch", "2", *where], capsys)
    served = {"full": ["--quant", "none"], "lora": ["--quant", "merged", "--rank", "16", "--targets", "all-linear"],
              "qlora": ["--quant", "nf4", "--rank", "16", "--targets", "all-linear"]}
    for row in rows:
        infer = _json(["infer", "--model", "llama2-7b", *served[row["plan"]["method"]], "--context", "4096",
                       "--batch", "2", *where], capsys)
        assert row["inference"] == infer
    by = {r["plan"]["method"]: r["inference"] for r in rows}
    assert by["qlora"]["adapter_bytes"] > 0 and by["lora"]["adapter_bytes"] == 0
    assert by["qlora"]["peak_bytes"] < by["lora"]["peak_bytes"]  # 4-bit + adapter vs merged 16-bit


def test_fp16_plan_serves_in_fp16(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(["compare", "--model", "qwen2.5-0.5b", "--param-dtype", "fp16", "--infer-context", "1024"], capsys)
    assert {r["inference"]["plan"]["dtype"] for r in rows} == {"fp16"}


def test_without_the_flag_rows_are_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(["compare", "--model", "qwen2.5-0.5b"], capsys)
    assert all("inference" not in r for r in rows)


def test_table_shows_the_column(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["compare", "--model", "qwen2.5-0.5b", "--gpu", "rtx4090", "--infer-context", "2048"]) == 0
    out = capsys.readouterr().out
    assert "generate: its model, 1 x 2048 tokens" in out and "nf4+LoRA" in out and "merged" in out
    assert "max b" in out


@pytest.mark.parametrize("flags,words", [
    (["--infer-context", "100"], "--infer-context 100 must be above --infer-new-tokens 256"),
    (["--infer-context", "1000", "--infer-batch", "0"], "--infer-batch and --infer-new-tokens"),
    (["--infer-context", "x"], "invalid int value"),
])
def test_bad_values_are_one_line(capsys: pytest.CaptureFixture[str], flags: list[str], words: str) -> None:
    try:
        code = main(["compare", "--model", "qwen2.5-0.5b", *flags])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1
