"""MoE experts as transformers 4.x builds them: every expert's MLP is its own `nn.Linear`s (`--transformers 4`).

transformers 4.57 `modeling_mixtral.py`: `MixtralSparseMoeBlock` (the decoder layer's `block_sparse_moe`) holds
`gate = nn.Linear(hidden, num_local_experts)` and `experts = nn.ModuleList([MixtralBlockSparseTop2MLP] * E)`,
each with `w1`/`w3` [intermediate, hidden] and `w2` [hidden, intermediate]; `modeling_qwen2_moe.py` /
`modeling_qwen3_moe.py`: `Qwen2MoeSparseMoeBlock` (`mlp`) with `gate` and `experts.N.{gate,up,down}_proj`.
transformers 5 fused those into 3-D `experts.gate_up_proj` / `experts.down_proj` and made the router a custom
module. Since they are `nn.Linear` under 4.x, the generic rules hold for them, as checked on the 4.57 module tree
(tests/test_moe_v4.py): `replace_with_bnb_linear` quantizes every expert linear and the router (only `lm_head`
is kept: `get_keys_to_not_convert`), and peft's `all-linear` (`_maybe_include_all_linear_layers`) wraps them all.

So a v4 plan is priced on the model as 4.x builds it: `transformers_model` gives a spec whose inventory lists
each expert linear (role `linear`, leaf names `MoELayout.v4_linears`) and the router as a `gate` linear; every
consumer of the inventory (static memory, load events, FSDP units) then quantizes and wraps them as it does
every other linear. The layer program is `moe.moe_v4` (the per-expert loop).

Limits (tests/test_moe_v4.py says what was measured): the loop cannot be traced under FakeTensorMode
(`torch.where` -> `nonzero` has a data-dependent shape), so it is checked by real CPU steps under transformers
4.57 at small size, not at full size; vramplan.measure cannot build a 4-bit model under 4.57 (it calls the 5.x
quantizer API), so QLoRA is checked on the module tree only (which linears become `Linear4bit`). Other 4.x-only
code outside the MoE block is not modelled: 4.57's Qwen2-MoE keeps its own attention classes
(`Qwen2MoeSdpaAttention`: `repeat_kv` materialises K and V before SDPA), about 2% more forward memory at tiny size.
"""

from __future__ import annotations

from functools import cached_property

from vramplan.architecture import traits_of
from vramplan.inventory import Inventory, ParamTensor
from vramplan.models import ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.traits import MoELayout


def v4_tensors(tensors: list[ParamTensor], moe: MoELayout) -> list[ParamTensor]:
    """The fused v5 expert tensors unrolled into transformers 4.x's per-expert linears, in `named_parameters()`
    order (router, then expert 0's linears in the order the module defines them, expert 1's, ...)."""
    gate, up, down = moe.v4_linears
    out: list[ParamTensor] = []
    fused_down: dict[int | None, ParamTensor] = {
        t.layer: t for t in tensors if t.role == "experts" and t.name.endswith("down_proj")}
    for t in tensors:
        block = t.name.rsplit(".", 2)[0].replace(".mlp", f".{moe.v4_block}") if t.role in ("router", "experts") else ""
        if t.role == "router":
            out.append(ParamTensor(f"{block}.gate.weight", t.shape, "linear", "gate", t.layer))
        elif t.role == "experts" and t.name.endswith("gate_up_proj"):
            e, inter2, h = t.shape
            dn = fused_down[t.layer]
            for j in range(e):
                p = f"{block}.experts.{j}"
                mine = {gate: (inter2 // 2, h), up: (inter2 // 2, h), down: dn.shape[1:]}
                out += [ParamTensor(f"{p}.{n}.weight", mine[n], "linear", n, t.layer) for n in moe.v4_order]
        elif t.role != "experts":
            out.append(t)
    return out


class TransformersV4Spec(ModelSpec):
    """A model as transformers 4.x builds it (per-expert `nn.Linear`s). Its fingerprint differs from the fused
    model's, so the caches keyed on it (`ModelCache`) keep the two apart."""

    @cached_property
    def fused_inventory(self) -> Inventory:
        """The transformers 5 inventory (fused 3-D experts)."""
        return ModelSpec.inventory.func(self)  # type: ignore[attr-defined]

    @cached_property
    def inventory(self) -> Inventory:  # type: ignore[override]
        fused = self.fused_inventory
        return Inventory(v4_tensors(fused.tensors, traits_of(self).moe), fused.buffer_bytes)

    @cached_property
    def fingerprint(self) -> str:  # type: ignore[override]
        return ModelSpec.fingerprint.func(self) + ":transformers4"  # type: ignore[attr-defined]


_V4: dict[str, TransformersV4Spec] = {}


def transformers_model(model: ModelSpec, plan: TrainingPlan) -> ModelSpec:
    """The model the plan's transformers version builds: `model` itself, or under `--transformers 4` for a model
    with fused experts the per-expert spec (one per config)."""
    if plan.transformers != 4 or isinstance(model, TransformersV4Spec) or traits_of(model).moe is None:
        return model
    if not model.inventory.numel_by_role.get("experts"):
        return model  # no sparse layer configured (Qwen-MoE num_experts 0): nothing differs
    spec = _V4.get(model.fingerprint)
    if spec is None:
        if len(_V4) >= 64:
            _V4.clear()
        spec = _V4[model.fingerprint] = TransformersV4Spec(**{f: getattr(model, f) for f in model.field_names()})
    return spec


def fused_inventory(model: ModelSpec) -> Inventory:
    """The model's inventory with the experts fused (as transformers 5 lists them), whichever spec it is."""
    return model.fused_inventory if isinstance(model, TransformersV4Spec) else model.inventory
