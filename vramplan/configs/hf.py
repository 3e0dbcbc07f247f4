"""HF TrainingArguments JSON, peft adapter_config.json, BitsAndBytesConfig JSON (placeholder)."""

from __future__ import annotations

from types import SimpleNamespace

TRAINING_ARGS = PEFT = BNB = SimpleNamespace(looks_like=lambda data: False)
