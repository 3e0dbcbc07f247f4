"""Models the page can plan beyond the presets: an uploaded config.json and the hub ids in the local HF cache.

An upload is read by the same strict reader as `--model path/config.json` (`models.resolve_model` ->
`config_schema.check_config`): a bad field is a 400 with that one-line message. A good one is stored under the
server's upload folder, named by its content's hash, so the model value (a folder path) is stable for the
server's lifetime and a shared URL restores it while the server runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

MAX_CONFIG_BYTES = 256 * 1024  # a causal LM's config.json is a few KiB; multimodal ones stay under 64 KiB


def cached_hub_ids() -> list[str]:
    """Hub ids whose config.json is in the local HF cache: the ones `--model org/name` resolves offline
    (`models._config_from_hf_cache` reads `models--org--name/snapshots/*/config.json` under these roots)."""
    from vramplan.models import _hf_cache_dirs

    ids = set()
    for root in _hf_cache_dirs():
        for folder in root.glob("models--*--*") if root.is_dir() else ():
            if next((folder / "snapshots").glob("*/config.json"), None) is not None:
                ids.add(folder.name[len("models--"):].replace("--", "/", 1))
    return sorted(ids)


def store_config(body: bytes, name: str, upload_dir: str) -> dict:
    """Validate an uploaded config.json and store it; {"model": <value for model=>, "name": <shown name>}."""
    from vramplan.errors import VramplanError
    from vramplan.models import resolve_model

    try:
        cfg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{name}: not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{name}: expected a JSON object, got {type(cfg).__name__}")  # noqa: TRY004 (a 400)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).stem).strip(".-") or "config"
    digest = hashlib.sha256(body).hexdigest()[:12]
    folder = Path(upload_dir) / digest / (f"uploaded-{digest[:8]}" if stem == "config" else stem)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_bytes(body)
    try:
        spec = resolve_model(str(folder))
    except VramplanError as exc:
        shutil.rmtree(folder.parent, ignore_errors=True)
        raise ValueError(str(exc).replace(str(folder / "config.json"), name)) from None
    return {"model": str(folder), "name": spec.name}
