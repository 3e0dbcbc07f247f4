"""The page in a real headless Chromium (Debian's `chromium`, driven by playwright): it loads, a changed knob
shows what the CLI prints for the same plan, a shared URL restores the state, a bad value is an inline error.
Screenshots go to $VRAMPLAN_ARTIFACTS (else the test's tmp folder). Skipped without a browser unless
VRAMPLAN_REQUIRE_BROWSER=1."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("VRAMPLAN_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("VRAMPLAN_REQUIRE_BROWSER=1 but playwright is not installed")
        pytest.skip("playwright is not installed")
    if not Path(CHROMIUM).exists():
        if required:
            pytest.fail(f"VRAMPLAN_REQUIRE_BROWSER=1 but no chromium at {CHROMIUM}")
        pytest.skip("no chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("VRAMPLAN_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    from vramplan.cli import main

    main([*argv, "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_page_knob_url_and_error(browser, server_url: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    shots = _artifacts(tmp_path)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server_url + "/")
    page.wait_for_selector("body[data-state=ready]")
    page.screenshot(path=str(shots / "web-loaded.png"), full_page=True)

    page.evaluate("document.body.dataset.state = ''")
    page.select_option("select[name=method]", "lora")
    page.fill("input[name=seq]", "4096")
    page.dispatch_event("input[name=seq]", "change")
    page.wait_for_function("new URLSearchParams(location.search).get('seq') === '4096'")
    page.wait_for_selector("body[data-state=ready]")
    cli = _cli_json(["estimate", "--model", "llama2-7b", "--gpu", "rtx4090", "--method", "lora", "--rank", "8",
                     "--targets", "default", "--seq", "4096", "--batch", "1", "--grad-accum", "1", "--attn", "sdpa",
                     "--grad-ckpt"], capsys)
    verdict = page.inner_text("#verdict")
    assert f"peak {cli['peak_bytes'] / 2**30:.2f} GiB" in verdict
    shown = page.eval_on_selector_all("#components tbody tr", "rs => rs.map(r => r.cells[0].textContent)")
    held = {k.replace("_", " ") for k, v in cli["components"].items() if k not in ("total", "engine_parts") and v > 0}
    assert set(shown) == held  # the parts that hold bytes, not their total
    assert f"{cli['total_gpu_bytes'] / 2**30:.2f} GiB on rtx4090" in verdict
    page.screenshot(path=str(shots / "web-lora-4096.png"), full_page=True)

    shared = page.url
    other = browser.new_page(viewport={"width": 1100, "height": 900})
    other.goto(shared)
    other.wait_for_selector("body[data-state=ready]")
    assert other.input_value("input[name=seq]") == "4096" and other.input_value("select[name=method]") == "lora"
    assert other.inner_text("#verdict") == verdict

    other.fill("input[name=seq]", "-5")
    other.dispatch_event("input[name=seq]", "change")
    other.wait_for_selector("body[data-state=error]")
    assert "seq" in other.inner_text("#error")
    other.screenshot(path=str(shots / "web-error.png"), full_page=True)


@pytest.mark.slow
def test_knobs_and_charts(browser, server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Controls generated from the CLI's plan flags change the numbers to the CLI's; the three charts render: one
    series per method on both sweeps with the GPU's line, one bar per phase on the timeline."""
    shots = _artifacts(tmp_path)
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
    page.goto(server_url + "/?model=qwen2.5-0.5b&gpu=rtx4090&method=lora")
    page.wait_for_selector("body[data-state=ready]")
    for name in ("use-dora", "eval-batch", "sharding", "offload", "trainer", "gpus", "expandable-segments"):
        assert page.locator(f"[name={name}]").count() == 1, name

    page.evaluate("document.body.dataset.state = ''")
    page.select_option("select[name=use-dora]", "true")
    page.select_option("select[name=grad-ckpt]", "false")
    page.check("input[name=expandable-segments]")
    page.wait_for_function("new URLSearchParams(location.search).get('expandable-segments') === '1'")
    page.wait_for_selector("body[data-state=ready]")
    page.wait_for_selector("body[data-charts=ready]", timeout=120_000)
    cli = _cli_json(["estimate", "--model", "qwen2.5-0.5b", "--gpu", "rtx4090", "--method", "lora", "--use-dora",
                     "--no-grad-ckpt", "--expandable-segments"], capsys)
    assert f"peak {cli['peak_bytes'] / 2**30:.2f} GiB" in page.inner_text("#verdict")
    assert f"{cli['total_gpu_bytes'] / 2**30:.2f} GiB on rtx4090" in page.inner_text("#verdict")
    for chart in ("#chart-seq", "#chart-batch"):
        methods = page.eval_on_selector_all(f"{chart} g.series", "gs => gs.map(g => g.dataset.method)")
        assert sorted(methods) == ["full", "lora", "qlora"]
        assert page.locator(f"{chart} line.gpu-line").count() == 1
    assert page.locator("#chart-timeline rect.bar").count() == len(cli["phases"])
    assert page.locator("#chart-timeline rect.peak").get_attribute("data-phase") == cli["peak_phase"]
    page.screenshot(path=str(shots / "web-knobs-charts.png"), full_page=True)

    shared = browser.new_page(viewport={"width": 1100, "height": 1400})
    shared.goto(page.url)
    shared.wait_for_selector("body[data-state=ready]")
    assert shared.input_value("select[name=use-dora]") == "true"
    assert shared.is_checked("input[name=expandable-segments]")
    assert shared.inner_text("#verdict") == page.inner_text("#verdict")


@pytest.mark.slow
def test_upload_config(browser, server_url: str, tmp_path: Path) -> None:
    """Uploading a config.json plans that model; a bad one is the strict reader's inline error."""
    from importlib import resources

    good = tmp_path / "my-qwen.json"
    good.write_text(resources.files("vramplan").joinpath("presets", "qwen2.5-0.5b.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(json.loads(good.read_text()) | {"hidden_size": "big"}))
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server_url + "/")
    page.wait_for_selector("body[data-state=ready]")
    page.evaluate("document.body.dataset.state = ''")
    page.set_input_files("#upload", str(good))
    page.wait_for_function("(new URLSearchParams(location.search).get('model') || '').endsWith('my-qwen')")
    page.wait_for_selector("body[data-state=ready]")
    assert "peak" in page.inner_text("#verdict")
    page.evaluate("document.body.dataset.state = ''")
    page.set_input_files("#upload", str(bad))
    page.wait_for_selector("body[data-state=error]")
    assert page.inner_text("#error").startswith("bad.json: hidden_size")
    page.screenshot(path=str(_artifacts(tmp_path) / "web-upload-error.png"), full_page=True)
