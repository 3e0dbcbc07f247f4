"""LLaMA-Factory YAML (placeholder: filled in the next commit)."""

from __future__ import annotations


def looks_like(data: dict) -> bool:
    return False
