"""DeepSpeed JSON (the `deepspeed` config HF Trainer, axolotl, LLaMA-Factory and accelerate pass on).

Mapped: `zero_optimization.stage` 1-3 -> sharding zero1/zero2/zero3; `offload_optimizer.device: cpu` -> offload
optimizer (ZeRO-Offload), `offload_param.device: cpu` -> offload params (stage 3 only); the batch fields when
they are numbers (HF's integration fills "auto" from TrainingArguments:
`HfTrainerDeepSpeedConfig.trainer_config_process`).
The estimator models the bucket sizes HF fills for "auto" (vramplan.estimator.deepspeed); a number there is refused.
"""

from __future__ import annotations

from pathlib import Path

from vramplan.configs.fields import (
    ConfigReadError,
    FieldReader,
    as_float,
    as_int,
    load_mapping,
)

# zero_optimization fields whose size the estimator takes from HF's "auto" fill or DeepSpeed's default.
_AUTO_SIZES = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
               "stage3_param_persistence_threshold")
_DEFAULT_SIZES = {"stage3_max_live_parameters": 10**9, "stage3_max_reuse_distance": 10**9}


def looks_like(data: dict) -> bool:
    return "zero_optimization" in data or "train_micro_batch_size_per_gpu" in data


def read_file(path: Path, source: str | None = None) -> FieldReader:
    reader = FieldReader(load_mapping(path), source or str(path))
    read(reader)
    return reader


def read(reader: FieldReader) -> None:
    zero = reader.section("zero_optimization")
    stage = as_int(zero, "stage", zero.take("stage", 0)) if zero else 0
    if stage not in (1, 2, 3):
        reader.refuse("zero_optimization.stage", f"stage {stage} (DeepSpeed data parallelism without ZeRO)")
    assert zero is not None
    reader.set("sharding", f"zero{stage}", "zero_optimization.stage")
    offload = _offload(zero, "offload_optimizer") and "optimizer"
    if _offload(zero, "offload_param"):
        offload = "params"
    if offload:
        reader.set("offload", offload, f"zero_optimization.offload_{'param' if offload == 'params' else 'optimizer'}")
    for key in _AUTO_SIZES:
        value = zero.take(key)
        if value not in (None, "auto"):
            zero.refuse(key, f"{value} (the estimator sizes it as HF's 'auto' fill does)")
    for key, default in _DEFAULT_SIZES.items():
        value = zero.take(key)
        if value not in (None, "auto") and as_float(zero, key, value) != default:
            zero.refuse(key, f"{value} (the estimator assumes DeepSpeed's default {default:.0e})")
    reader.absorb(zero)
    reader.set("batch", as_int(reader, "train_micro_batch_size_per_gpu", reader.take("train_micro_batch_size_per_gpu"),
                                  auto=True),
               "train_micro_batch_size_per_gpu")
    reader.set("grad_accum",
               as_int(reader, "gradient_accumulation_steps", reader.take("gradient_accumulation_steps"), auto=True),
               "gradient_accumulation_steps")


def _offload(zero: FieldReader, key: str) -> bool:
    section = zero.section(key)
    if section is None:
        return False
    device = str(section.take("device", "none")).lower()
    zero.absorb(section)
    if device == "nvme":
        zero.refuse(f"{key}.device", "nvme (ZeRO-Infinity)")
    if device not in ("cpu", "none"):
        raise ConfigReadError(f"{zero.source}: {zero.prefix}{key}.device: {device!r}; "
                              "DeepSpeed takes cpu, nvme or none")
    return device == "cpu"
