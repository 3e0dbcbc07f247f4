"""Inventory of an architecture with no hand-written spec: build the transformers class on the meta device.

No memory, no weights: `torch.device("meta")` gives every parameter its shape and nothing else (the trick
accelerate's `estimate-memory` command uses). Roles follow what transformers' bitsandbytes integration does:
only modules whose type *is* `nn.Linear` get quantized, and never the output embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vramplan.errors import UnsupportedArchitectureError
from vramplan.inventory import Inventory, ParamTensor


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def inventory_from_meta(cfg: Mapping[str, Any]) -> Inventory:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # unknown model_type, or no causal-LM class for it
        raise UnsupportedArchitectureError(
            f"transformers cannot build a causal LM for model_type '{cfg.get('model_type')}': {exc}"
        ) from None
    output = model.get_output_embeddings()
    modules = dict(model.named_modules())
    tensors: list[ParamTensor] = []
    for name, param in model.named_parameters():
        owner_name, _, leaf = name.rpartition(".")
        owner = modules.get(owner_name)
        module = owner_name.rpartition(".")[2]
        if owner is output:
            role = "lm_head"
        elif isinstance(owner, torch.nn.Embedding):
            role = "embedding"
        elif type(owner) is torch.nn.Linear:
            role = "linear" if leaf == "weight" else "bias"
        elif param.dim() == 1:
            role = "bias" if leaf == "bias" else "norm"
        elif param.dim() == 3:
            role = "experts"
        else:
            role = "router"
        tensors.append(ParamTensor(name, tuple(param.shape), role, module, _layer_index(name)))
    return Inventory(tensors)
