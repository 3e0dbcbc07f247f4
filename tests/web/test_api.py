"""The JSON API answers exactly what the CLI's `--json` prints, refuses bad input in one line, and takes load."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_estimate_is_what_the_cli_prints(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from vramplan.cli import main

    query = {"model": "llama2-7b", "method": "lora", "seq": "2048", "rank": "16", "targets": "all-linear"}
    status, body = _get(f"{server_url}/api/estimate?{urllib.parse.urlencode(query)}")
    assert status == 200
    argv = ["estimate", *[x for k, v in query.items() for x in (f"--{k}", v)], "--json"]
    assert main(argv) == 0
    assert body == json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("query", "words"), [({"model": "llama2-7b", "seq": "-3"}, "seq"),
                                              ({"model": "nosuchmodel"}, "unknown model"),
                                              ({"model": "llama2-7b", "frobnicate": "1"}, "unknown field")])
def test_bad_input_is_a_400_with_one_line(server_url: str, query: dict, words: str) -> None:
    status, body = _get(f"{server_url}/api/estimate?{urllib.parse.urlencode(query)}")
    assert status == 400 and words in body["error"] and "\n" not in body["error"]


def test_options_list_presets_and_gpus(server_url: str) -> None:
    status, body = _get(f"{server_url}/api/options")
    assert status == 200 and "llama2-7b" in body["models"] and "rtx4090" in body["gpus"]


@pytest.mark.slow
def test_100_concurrent_estimates(server_url: str) -> None:
    urls = [f"{server_url}/api/estimate?model=llama2-7b&method=qlora&seq={256 * (1 + i % 8)}" for i in range(100)]
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(_get, urls))
    assert all(status == 200 for status, _ in answers)
    assert answers[0][1]["plan"]["seq"] == 256


@pytest.mark.slow
def test_estimates_answer_while_a_suggest_search_runs(server_url: str) -> None:
    import time

    with ThreadPoolExecutor(max_workers=8) as pool:
        search = pool.submit(_get, f"{server_url}/api/suggest?model=llama2-7b&gpu=rtx4090")
        time.sleep(0.5)  # let the search start (ordering only; nothing asserts a duration)
        answers = list(pool.map(_get, [f"{server_url}/api/estimate?model=llama2-7b&seq={s}" for s in (512, 1024)]))
        assert all(status == 200 for status, _ in answers)
        assert not search.done(), "the search ended before the estimates were answered: no overlap was tested"
        status, body = search.result()
    assert status == 200 and body["plans"]


def test_every_plan_flag_is_a_knob() -> None:
    """The page's controls are the CLI's plan flags: every dest of estimate's plan groups once (HF aliases and
    the config-file flags aside), each knob's name a real flag of the parser."""
    import argparse

    from vramplan.cli import build_parser
    from vramplan.web.knobs import GROUPS, knobs

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["estimate"]
    dests = {a.dest for g in sub._action_groups if (g.title or "").startswith(GROUPS) for a in g._group_actions
             if not a.dest.startswith(("trl_", "hf_"))}
    shown = [k["dest"] for k in knobs("estimate")]
    assert sorted(shown) == sorted(dests)
    assert all(f"--{k['name']}" in sub._option_string_actions for k in knobs("estimate"))
    assert {"method", "rank", "targets", "seq", "batch", "grad_accum", "grad_ckpt", "attn", "optimizer", "trainer",
            "eval_batch", "use_dora", "gpus", "sharding", "offload"} <= set(shown)


@pytest.mark.parametrize("query,flags", [
    ({"grad-ckpt": "false", "use-dora": "true", "method": "lora"},
     ["--no-grad-ckpt", "--use-dora", "--method", "lora"]),
    ({"ckpt-reentrant": "1", "double-quant": "false"}, ["--ckpt-reentrant", "--no-double-quant"]),
    ({"gpus": "2", "sharding": "fsdp", "method": "lora"}, ["--gpus", "2", "--sharding", "fsdp", "--method", "lora"]),
])
def test_knob_queries_are_the_cli_flags(server_url: str, capsys: pytest.CaptureFixture[str], query: dict,
                                        flags: list[str]) -> None:
    from vramplan.cli import main

    status, body = _get(f"{server_url}/api/estimate?{urllib.parse.urlencode({'model': 'qwen2.5-0.5b', **query})}")
    assert status == 200, body
    main(["estimate", "--model", "qwen2.5-0.5b", *flags, "--json"])
    assert body == json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("gpu", [None, pytest.param("rtx4090", marks=pytest.mark.slow)])
def test_sweep_points_are_what_estimate_prints(server_url: str, capsys: pytest.CaptureFixture[str],
                                               gpu: str | None) -> None:
    """The chart's series (the sweep `vramplan plot` draws): each point is the CLI's number for that plan (the
    total on the card with a GPU, else the peak)."""
    from vramplan.cli import main

    where = {"gpu": gpu} if gpu else {}
    query = {"model": "qwen2.5-0.5b", **where, "rank": "16", "field": "batch"}
    status, body = _get(f"{server_url}/api/sweep?{urllib.parse.urlencode(query)}")
    assert status == 200, body
    assert set(body["series"]) == {"full", "lora", "qlora"} and body["values"] == [1, 2, 4, 8, 16]
    for method, i in (("lora", 2), ("qlora", 0)):
        main(["estimate", "--model", "qwen2.5-0.5b", *(["--gpu", gpu] if gpu else []), "--rank", "16",
              "--method", method, "--batch", str(body["values"][i]), "--json"])
        cli = json.loads(capsys.readouterr().out)
        assert body["series"][method][i] == (cli["total_gpu_bytes"] if gpu else cli["peak_bytes"])
    assert body["gpu_usable_bytes"] == cli.get("gpu_usable_bytes")
    assert _get(f"{server_url}/api/sweep?model=qwen2.5-0.5b&field=rank")[0] == 400


def _post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_uploaded_config_is_read_strictly(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An upload is the strict reader's (`--model path/config.json`): same numbers, same one-line refusals."""
    from importlib import resources

    from vramplan.cli import main

    text = resources.files("vramplan").joinpath("presets", "qwen2.5-0.5b.json").read_text()
    status, body = _post(f"{server_url}/api/config?name=my-qwen.json", text.encode())
    assert status == 200 and body["name"] == "my-qwen"
    status, est = _get(f"{server_url}/api/estimate?{urllib.parse.urlencode({'model': body['model'], 'seq': '512'})}")
    main(["estimate", "--model", body["model"], "--seq", "512", "--json"])
    assert status == 200 and est == json.loads(capsys.readouterr().out)
    bad = json.loads(text) | {"num_attention_heads": 0}
    status, err = _post(f"{server_url}/api/config?name=bad.json", json.dumps(bad).encode())
    assert status == 400 and err["error"].startswith("bad.json: num_attention_heads")
    assert _post(f"{server_url}/api/config", b"{" * (300 * 1024))[0] == 413
    assert _post(f"{server_url}/api/config", b"not json")[0] == 400


def test_cached_hub_ids_are_offered(server_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub ids in the local HF cache (`--model org/name` resolves them offline) are in the page's model list."""
    from importlib import resources

    snap = tmp_path / "models--acme--tiny-qwen" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(resources.files("vramplan").joinpath("presets", "qwen2.5-0.5b.json").read_text())
    (tmp_path / "models--acme--no-config" / "snapshots").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("VRAMPLAN_OFFLINE", "1")
    assert _get(f"{server_url}/api/options")[1]["hub_ids"] == ["acme/tiny-qwen"]
    status, body = _get(f"{server_url}/api/estimate?model=acme/tiny-qwen")
    assert status == 200 and body["model"] == "acme/tiny-qwen"
