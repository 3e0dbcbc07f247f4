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
