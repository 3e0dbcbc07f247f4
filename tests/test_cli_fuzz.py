"""Fuzzing the CLI in-process: whatever the flags, the exit code is 0, 1 or 2, stderr holds no traceback, an
input error is one line, and `--json` output always parses.

The fast tier runs 2,100 invocations (700 drawn flag sets, each through estimate, compare and suggest). Valid
plans are priced without a GPU there: pricing on a GPU simulates the caching allocator (seconds for a new plan),
and a valid suggest searches, so suggest gets at least one bad value in the fast tier and valid GPU runs are in
the slow tier. The CLI runs in this process (`vramplan.cli.main`), so an invocation takes milliseconds.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vramplan.cli import main

BAD_NUMBERS = ("-1", "0", "nan", "inf", "-inf", "1e309", "99999999999", "1.5", "abc", "", "0x10", "1e3")
BAD_WORDS = ("", "nope", "BF16 ", "--", "none,", "∞")
MODELS = ("qwen2.5-0.5b", "llama3.2-1b", "qwen3-30b-a3b", "gemma2-2b")
BAD_MODELS = (",", " ", "", "nope-7b", "no/such-model", "./missing/config.json", "qwen2.5-0.5b,,")

NUMERIC = {  # flag -> valid values (few, so that the estimator's caches are hit)
    "--seq": ("256", "1024", "4096", "40000"),  # 40000: beyond the context of some models (a warning)
    "--batch": ("1", "2"),
    "--grad-accum": ("1", "4"),
    "--rank": ("8", "64"),
    "--alpha": ("16", "0.5"),
    "--lora-dropout": ("0", "0.1"),
    "--gpus": ("1", "2", "8"),
}
CHOICES = {
    "--method": ("full", "lora", "qlora"),
    "--param-dtype": ("bf16", "fp16", "fp32"),
    "--optimizer": ("adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd"),
    "--attn": ("sdpa", "eager", "flash_attention_2"),
    "--sharding": ("ddp", "fsdp", "zero2", "zero3"),
    "--offload": ("none", "optimizer", "params"),
    "--targets": ("default", "attention", "all-linear", "q_proj,v_proj"),
}
SUGGEST_NUMERIC = {
    "--host-ram": ("64", "512"), "--effective-batch": ("8", "32"), "--min-seq": ("512",),
    "--headroom": ("0.1", "0.3"), "--top": ("1", "3"),
}


def value(valid: tuple[str, ...], bad: tuple[str, ...]):
    return st.one_of(st.sampled_from(valid), st.sampled_from(bad))


def flag_sets(numeric: dict, choices: dict, max_flags: int):
    pairs = [st.tuples(st.just(f), value(v, BAD_NUMBERS)) for f, v in numeric.items()]
    pairs += [st.tuples(st.just(f), value(v, BAD_WORDS)) for f, v in choices.items()]
    return st.lists(st.one_of(*pairs), max_size=max_flags, unique_by=lambda p: p[0])


def invoke(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors and --help
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def check(argv: list[str]) -> int:
    code, out, err = invoke(argv)
    shown = " ".join(argv)
    assert code in (0, 1, 2), f"{shown}: exit {code}\n{err}"
    assert "Traceback" not in err, f"{shown}:\n{err}"
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "error" in err, f"{shown}:\n{err}"
    elif "--json" in argv:
        json.loads(out)  # raises on anything that is not one JSON document
    return code


def args_of(pairs) -> list[str]:
    """argv words; a value that is empty or starts with '-' is attached (`--seq=-1`), as a shell user would."""
    out: list[str] = []
    for flag, v in pairs:
        out += [f"{flag}={v}"] if not v or v.startswith("-") else [flag, v]
    return out


@settings(max_examples=700, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(model=value(MODELS, BAD_MODELS), pairs=flag_sets(NUMERIC, CHOICES, 6),
       suggest_pairs=flag_sets(SUGGEST_NUMERIC, {}, 3), as_json=st.booleans(), gpu=st.sampled_from(("nope", "")))
def test_every_invocation_exits_0_1_or_2_with_one_line_errors(model, pairs, suggest_pairs, as_json, gpu):
    flags = args_of(pairs) + (["--json"] if as_json else [])
    check(["estimate", "--model", model, *flags])
    check(["compare", "--model", model, *args_of(p for p in pairs if p[0] != "--method"),
           *(["--json"] if as_json else [])])  # compare runs every method
    bad_gpu = [f"--gpu={gpu}"] if gpu else ["--gpu", "nope"]
    assert check(["suggest", "--model", model, *bad_gpu, *args_of(suggest_pairs), *flags]) == 2


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=flag_sets(NUMERIC, CHOICES, 4), suggest_pairs=flag_sets(SUGGEST_NUMERIC, {}, 3),
       gpu=st.sampled_from(("rtx4090", "t4", "h100-sxm", "mi300x")))
def test_valid_gpus_and_searches_exit_0_1_or_2(pairs, suggest_pairs, gpu):
    flags = args_of(pairs) + ["--json"]
    check(["estimate", "--model", "qwen2.5-0.5b", "--gpu", gpu, *flags])
    check(["suggest", "--model", "qwen2.5-0.5b", "--gpu", gpu, *args_of(suggest_pairs), *flags])
