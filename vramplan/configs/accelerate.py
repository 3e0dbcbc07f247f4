"""accelerate config YAML (`accelerate config` / `accelerate launch --config_file`), and the FSDP settings that
HF TrainingArguments, axolotl and accelerate spell alike (with or without the `fsdp_` prefix).

Mapped: `num_processes` -> gpus (the job's total processes, one per GPU); `distributed_type` MULTI_GPU -> ddp,
FSDP -> the `fsdp_config` below, DEEPSPEED -> `deepspeed_config` (zero_stage, offload devices, or the JSON of
`deepspeed_config_file`). FSDP: `sharding_strategy` FULL_SHARD or FSDP2's `reshard_after_forward: true` -> fsdp,
SHARD_GRAD_OP / `reshard_after_forward: false` -> fsdp_grad_op (accelerate `FullyShardedDataParallelPlugin`),
`offload_params` -> offload params (`CPUOffloadPolicy`), `activation_checkpointing` -> non-reentrant checkpointing
of every wrapped layer (accelerate `fsdp2_apply_ac` / FSDP1 `apply_activation_checkpointing`).
`mixed_precision` is ignored: the training config's bf16/fp16 decide how weights are loaded and autocast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vramplan.configs import deepspeed
from vramplan.configs.fields import (
    ConfigReadError,
    FieldReader,
    as_bool,
    as_int,
    follow,
)

_STRATEGIES = {"FULL_SHARD": "fsdp", "1": "fsdp", "SHARD_GRAD_OP": "fsdp_grad_op", "2": "fsdp_grad_op"}


def looks_like(data: dict) -> bool:
    return "distributed_type" in data or "compute_environment" in data


def read(reader: FieldReader, base: Path) -> None:
    kind = reader.take("distributed_type", "NO")
    kind = "NO" if kind is False else str(kind).upper()  # YAML 1.1 reads an unquoted NO as false
    processes = as_int(reader, "num_processes", reader.take("num_processes"))
    reader.set("gpus", processes, "num_processes")
    if kind == "MULTI_GPU":
        reader.set("sharding", "ddp", "distributed_type")
    elif kind == "FSDP":
        section = reader.section("fsdp_config") or FieldReader({}, reader.source, "fsdp_config.")
        read_fsdp_config(section, "distributed_type")
        reader.absorb(section)
    elif kind == "DEEPSPEED":
        _read_deepspeed_section(reader, base)
    elif kind != "NO":
        reader.refuse("distributed_type", f"{kind} (vramplan models CUDA GPUs: NO, MULTI_GPU, FSDP, DEEPSPEED)")


def _read_deepspeed_section(reader: FieldReader, base: Path) -> None:
    section = reader.section("deepspeed_config") or FieldReader({}, reader.source, "deepspeed_config.")
    target = follow(section, "deepspeed_config_file", base)
    if isinstance(target, Path):
        followed = deepspeed.read_file(target)
        section.absorb(followed, "deepspeed_config_file")
        section.followed.append(str(target))
    else:
        stage = as_int(section, "zero_stage", section.take("zero_stage"))
        if stage not in (1, 2, 3):
            section.refuse("zero_stage", f"stage {stage} (DeepSpeed without ZeRO)")
        section.set("sharding", f"zero{stage}", "zero_stage")
        offload = None
        for key, what in (("offload_optimizer_device", "optimizer"), ("offload_param_device", "params")):
            device = str(section.take(key, "none")).lower()
            if device == "nvme":
                section.refuse(key, "nvme (ZeRO-Infinity)")
            if device == "cpu":
                offload = what
        section.set("offload", offload, "offload_param_device" if offload == "params" else "offload_optimizer_device")
        section.set("grad_accum", as_int(section, "gradient_accumulation_steps",
                                         section.take("gradient_accumulation_steps"), auto=True),
                    "gradient_accumulation_steps")
    reader.absorb(section)


def _take(reader: FieldReader, name: str) -> Any:
    """A FSDP field spelled `name` or `fsdp_name` (both are in use)."""
    for key in (name, f"fsdp_{name}"):
        if reader.given(key):
            return key, reader.take(key)
    reader.used.update((name, f"fsdp_{name}"))
    return name, None


def read_fsdp_config(reader: FieldReader, origin: str, words: tuple[str, ...] = ()) -> None:
    """FSDP settings of one `fsdp_config` mapping; `words` are HF's `--fsdp` words (full_shard, offload, ...)."""
    _, version = _take(reader, "version")
    strategy_key, strategy = _take(reader, "sharding_strategy")
    reshard_key, reshard = _take(reader, "reshard_after_forward")
    sharding = "fsdp"
    if "shard_grad_op" in words:
        sharding = "fsdp_grad_op"
    if "hybrid_shard" in words or "hybrid_shard_zero2" in words:
        reader.refuse(origin, "hybrid_shard (FSDP sharded within a node, replicated across nodes)")
    if strategy is not None:
        name = str(strategy).upper()
        if name not in _STRATEGIES:
            reader.refuse(strategy_key, f"{strategy} (vramplan models FULL_SHARD and SHARD_GRAD_OP)")
        sharding = _STRATEGIES[name]
    if reshard is not None:
        if isinstance(reshard, str) and reshard.upper() in _STRATEGIES:  # accelerate spells FSDP1's strategy here
            sharding = _STRATEGIES[reshard.upper()]
        else:
            sharding = "fsdp" if as_bool(reader, reshard_key, reshard) else "fsdp_grad_op"
    reader.set("sharding", sharding, reshard_key if reshard is not None else strategy_key if strategy else origin)
    if version is not None and str(version) not in ("1", "2"):
        raise ConfigReadError(f"{reader.source}: {reader.prefix}fsdp_version: {version!r}; FSDP versions are 1 and 2")
    if str(version or 1) == "1":
        reader.note("FSDP1 (flat parameters) estimated with the FSDP2 model: per-layer shards, same sharding rule")
    offload_key, offload = _take(reader, "offload_params")
    if "offload" in words or (offload is not None and as_bool(reader, offload_key, offload)):
        reader.set("offload", "params", offload_key if offload else origin)
    ac_key, checkpointing = _take(reader, "activation_checkpointing")
    if checkpointing is not None and as_bool(reader, ac_key, checkpointing):
        reader.set("grad_ckpt", True, ac_key)
        reader.set("ckpt_reentrant", False, ac_key)


def fsdp_words(reader: FieldReader, key: str, value: Any) -> tuple[str, ...] | None:
    """HF's `fsdp` field: True, a string of words or a list of them; None/False/'' when FSDP is off."""
    if value in (None, False, "", []):
        return None
    if value is True:
        return ("full_shard",)
    if isinstance(value, str):
        return tuple(value.lower().split())
    if isinstance(value, list):
        return tuple(str(v).lower() for v in value)
    raise ConfigReadError(f"{reader.source}: {reader.prefix}{key}: expected true, a string or a list, got {value!r}")
