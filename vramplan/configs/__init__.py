"""Training configs as plans: `read_config("axolotl.yml")` -> the model, the plan options, the ignored fields.

Formats (auto-detected, or named): axolotl YAML, LLaMA-Factory YAML, TRL's CLI YAML (`trl sft --config`), HF
`TrainingArguments` JSON, peft `adapter_config.json`, a `BitsAndBytesConfig` JSON, accelerate config YAML and
DeepSpeed JSON. Several files combine (an HF TrainingArguments JSON + adapter_config.json + an accelerate
config): each file's fields map to plan options, and two files that set one option differently are an error.
Each format's reader lives in its own module and cites what the framework does with each field.

Every field that changes memory maps to a plan option; a memory field the estimator cannot model is an error
naming it; every other field is listed in `ignored`. This package imports no torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vramplan.configs.fields import ConfigReadError, FieldReader, load_mapping
from vramplan.record import Record

FORMATS = ("axolotl", "llamafactory", "trl", "hf", "peft", "bnb", "accelerate", "deepspeed")


class ConfigReading(Record):
    """What one config (or a set of files read together) says about the training run."""

    error = ConfigReadError

    format: str  # one of FORMATS; "+"-joined when several files are read together
    source: str  # the file path(s), comma-joined
    model: str | None  # base_model / model_name_or_path: resolved later as any --model
    plan_options: dict[str, Any]  # keywords of vramplan.plan.make_plan
    origin: dict[str, str]  # plan option -> the config field it came from
    ignored: list[str]  # config fields that do not change memory
    # how a field was read where the framework decides at run time
    notes: list[str] = dataclasses.field(default_factory=list)
    # every file read, the ones the config points to (DeepSpeed JSON) included
    files: list[str] = dataclasses.field(default_factory=list)


def _readers() -> dict[str, Any]:
    from vramplan.configs import accelerate, axolotl, deepspeed, hf, llamafactory, trl

    return {"axolotl": axolotl, "llamafactory": llamafactory, "trl": trl, "hf": hf.TRAINING_ARGS,
            "peft": hf.PEFT, "bnb": hf.BNB, "accelerate": accelerate, "deepspeed": deepspeed}


def detect_format(data: dict[str, Any], path: Path) -> str:
    """The format a mapping is in, from the fields only that format has."""
    readers = _readers()
    for fmt in ("accelerate", "deepspeed", "peft", "bnb", "llamafactory", "axolotl", "trl", "hf"):
        if readers[fmt].looks_like(data):
            return fmt
    raise ConfigReadError(f"{path}: cannot tell the config format; give --config-format "
                          f"({', '.join(FORMATS)})")


def read_one(path: str | Path, fmt: str | None = None) -> ConfigReading:
    """One file, in `fmt` or the detected format."""
    path = Path(path)
    data = load_mapping(path)
    if fmt is not None and fmt not in FORMATS:
        from vramplan.errors import did_you_mean

        raise ConfigReadError(f"config format {fmt!r}: choose {', '.join(FORMATS)}{did_you_mean(fmt, FORMATS)}")
    fmt = fmt or detect_format(data, path)
    reader = FieldReader(data, str(path))
    module = _readers()[fmt]
    if fmt == "deepspeed":
        module.read(reader)
    else:
        module.read(reader, path.parent)
    return ConfigReading(format=fmt, source=str(path), model=reader.model, plan_options=reader.options,
                         origin=reader.origin, ignored=reader.ignored(), notes=reader.notes,
                         files=[str(path), *reader.followed])


def read_config(path: str | Path | Sequence[str | Path], fmt: str | None = None) -> ConfigReading:
    """Read a config file (or several read together) and check that its plan options make a plan."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        raise ConfigReadError("no config file given")
    readings = [read_one(p, fmt if len(paths) == 1 else None) for p in paths]
    reading = readings[0] if len(readings) == 1 else combine(readings)
    _check_plan(reading)
    return reading


def combine(readings: Sequence[ConfigReading]) -> ConfigReading:
    """Files read together: each option from the file that sets it; two files disagreeing is an error, except
    peft's LoRA with a 4-bit BitsAndBytesConfig, which is QLoRA."""
    options: dict[str, Any] = {}
    origin: dict[str, str] = {}
    model = None
    for r in readings:
        if r.model and model and r.model != model:
            raise ConfigReadError(f"{r.source}: model {r.model!r} differs from {model!r} in another config file")
        model = model or r.model
        for field, value in r.plan_options.items():
            if field == "method" and {value, options.get(field)} == {"lora", "qlora"}:
                value = "qlora"  # adapter_config.json (LoRA) read with a 4-bit BitsAndBytesConfig
            elif field in options and options[field] != value:
                raise ConfigReadError(f"{r.source}: {r.origin[field]} gives {field}={value!r}, but "
                                      f"{origin[field]} gives {options[field]!r}")
            options[field], origin[field] = value, origin.get(field, f"{r.source}: {r.origin[field]}")
    notes = [n for r in readings for n in r.notes]
    if any(r.format == "llamafactory" for r in readings) and str(options.get("sharding", "")).startswith("fsdp"):
        from vramplan.configs.llamafactory import FSDP2_NOTE

        notes.append(FSDP2_NOTE)
    return ConfigReading(format="+".join(r.format for r in readings), source=", ".join(r.source for r in readings),
                         model=model, plan_options=options, origin=origin,
                         ignored=[f for r in readings for f in r.ignored], notes=notes,
                         files=[f for r in readings for f in r.files])


def _check_plan(reading: ConfigReading) -> None:
    """The options alone must make a plan; an error names the config field behind the plan option."""
    from vramplan.errors import PlanError
    from vramplan.plan import make_plan

    try:
        make_plan(**reading.plan_options)
    except PlanError as exc:
        text = str(exc)
        fields = [text.split(":", 1)[0]] + [f.replace("-", "_") for f in re.findall(r"--([a-z][a-z-]*)", text)]
        where = ", ".join(dict.fromkeys(reading.origin[f] for f in fields if f in reading.origin))
        raise ConfigReadError(f"{reading.source}: {where + ' -> ' if where else ''}{text}") from None


__all__ = ["FORMATS", "ConfigReadError", "ConfigReading", "combine", "detect_format", "read_config", "read_one"]
