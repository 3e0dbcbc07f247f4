"""Imported by the forkserver that forks the ranks of `distributed.py`: the stack, imported once, before any
rank measures anything (imports make tensors: see `tracing.warm_caches`)."""

import torch.distributed  # noqa: F401
import torch.distributed.fsdp  # noqa: F401

from vramplan.measure import distributed, trainer  # noqa: F401
from vramplan.measure.tracing import warm_caches

warm_caches("llama")
