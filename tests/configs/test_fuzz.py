"""Any mapping, in any format: a reading or a one-line VramplanError, never another exception (hypothesis)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from vramplan.configs import (
    FORMATS,
    accelerate,
    axolotl,
    llamafactory,
    read_config,
    trl,
)
from vramplan.errors import VramplanError

# Field names the readers look at (and a few they do not), so that generated mappings reach their branches.
KEYS = sorted({*axolotl.REFUSED, *llamafactory.REFUSED, *trl.REFUSED, "base_model", "adapter", "load_in_4bit",
               "load_in_8bit", "lora_r", "lora_alpha", "lora_dropout", "lora_target_linear", "lora_target_modules",
               "sequence_len", "micro_batch_size", "gradient_accumulation_steps", "gradient_checkpointing",
               "gradient_checkpointing_kwargs", "flash_attention", "attn_implementation", "optimizer", "optim",
               "bf16", "fp16", "deepspeed", "fsdp", "fsdp_config", "fsdp_version", "bnb_config_kwargs",
               "model_name_or_path", "stage", "finetuning_type", "quantization_bit", "lora_rank", "lora_target",
               "cutoff_len", "per_device_train_batch_size", "flash_attn", "use_peft", "dtype", "max_length",
               "loss_type", "distributed_type", "num_processes", "zero_optimization", "peft_type", "r",
               "target_modules", "quant_method", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype", "eval_strategy",
               "val_set_size", "eval_batch_size", "per_device_eval_batch_size", "learning_rate",
               *accelerate.__dict__.get("_STRATEGIES", {})})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.floats(allow_nan=False, width=32),
                    st.sampled_from(["auto", "none", "lora", "qlora", "cpu", "nvme", "bf16", "fp32", "FSDP",
                                     "DEEPSPEED", "MULTI_GPU", "sft", "dpo", "all", "nf4", "x", "q_proj,v_proj",
                                     "adamw_torch"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["stage", "device",
                                                                                        "offload_optimizer",
                                                                                        "use_reentrant", "fsdp_version",
                                                                                        "reshard_after_forward"]),
                                                                       inner, max_size=3)), max_leaves=6)
mappings = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mappings, fmt=st.sampled_from([None, *FORMATS]))
def test_any_mapping_reads_or_is_a_one_line_error(data, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.json"
        path.write_text(json.dumps(data))
        try:
            read_config(path, fmt)
        except VramplanError as exc:
            assert "\n" not in str(exc)
