"""What every engine's re-pricing produces: the state a rank holds between steps (`Static`) and one moment of the
step re-priced as named components (`Priced`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from vramplan.estimator.weights import StaticMemory

WEIGHT_KEYS = ("quantized_weights", "quant_constants", "double_quant_constants", "base_weights", "lora_adapters")


@dataclass(frozen=True)
class Static:
    """What a rank holds between steps, split like the single-GPU components (bytes)."""

    weights: dict[str, int]  # per-GPU share of each weight component
    optimizer_states: int
    master_weights: int = 0  # DeepSpeed: fp32 copy of the trainable partition
    buffers: int = 0  # persistent communication buffers (DDP buckets)
    host: int = 0  # offloaded to host RAM (per GPU)
    states_at_init: bool = False  # DeepSpeed builds master weights and optimizer states at initialize()

    @property
    def load(self) -> int:
        """Live bytes before step 1 (torch optimizers create their states lazily, in the first step)."""
        eager = self.optimizer_states + self.master_weights if self.states_at_init else 0
        return sum(self.weights.values()) + self.buffers + eager

    def parts(self) -> dict[str, int]:
        """The components every moment of the step holds."""
        return {**self.weights, "optimizer_states": self.optimizer_states, "master_weights": self.master_weights,
                "comm_buffers": self.buffers}


class Priced(NamedTuple):
    """One moment re-priced for an engine: components that sum to the rank's live bytes."""

    phase: str
    parts: dict[str, int]
    where: str = ""  # the step moment's `where` ("reference": DPO's reference forward); "" for engine-only moments

    @property
    def total(self) -> int:
        return sum(self.parts.values())


@dataclass(frozen=True)
class Repriced:
    """An engine's view of the step: what it holds at rest, its forward/backward moments, its optimizer step."""

    static: Static
    moments: list[Priced]
    step: Priced
    # DPO's frozen reference copy (no PEFT) as the engine holds it: after load, and during the reference forward
    # (at load it is the whole copy, as loaded)
    reference_after_load: int = 0
    reference_in_forward: int = 0


def weight_components(st: StaticMemory) -> dict[str, int]:
    """The single-GPU weight components, by name (what an engine shards or keeps whole)."""
    return {k: getattr(st, k) for k in WEIGHT_KEYS}
