"""Static memory: base weights (4-bit packed or 16/32-bit), quantization constants, LoRA adapters.

Every rule names the library code it follows:
- transformers `integrations/bitsandbytes.py: replace_with_bnb_linear` quantizes modules whose type *is*
  `nn.Linear`, except `quantizers/base.py: get_keys_to_not_convert` (the output embedding and tied weights).
- bitsandbytes `functional.py: quantize_4bit`: packed uint8 weight of (n+1)//2 bytes; fp32 absmax per block of
  64; a fresh 16-entry fp32 code table per call (`get_4bit_type`). With double quantization
  (`compress_statistics`) the absmax is re-quantized by `quantize_blockwise(absmax - offset, blocksize=256)`:
  uint8 absmax, fp32 absmax per 256 of them, a scalar fp32 offset, and a per-layer copy of the 256-entry fp32
  "dynamic" code (`QuantState(code=code.to(A.device, copy=True))`): 1 KiB for every quantized layer.
- LLM.int8 (`load_in_8bit`): transformers' `replace_with_bnb_linear` makes the same `nn.Linear`s
  `bnb.nn.Linear8bitLt(has_fp16_weights=False, threshold=llm_int8_threshold)`; `Int8Params._quantize` ->
  `int8_vectorwise_quant`: an int8 `CB` [out, in] (the weight's data) and an fp32 absmax `SCB` per output row
  (moved to `state.CB/SCB` at the first forward, the same tensors). The bias stays a float parameter.
- peft `prepare_model_for_kbit_training` (4-bit or 8-bit base) casts every fp16/bf16 parameter that is not
  `Params4bit` to fp32 (int8 `CB` is no float: it stays).
- peft `get_peft_model(autocast_adapter_dtype=True)` keeps LoRA A/B in fp32 when the base is fp16/bf16.
- peft `utils/other.py: ModulesToSaveWrapper.update`: `modules_to_save` gets a `copy.deepcopy` of the original
  module (trainable), the original stays (`requires_grad_(False)`). The wrapper is no `BaseTunerLayer`, so
  `cast_adapter_dtype` leaves the copy in the original's dtype: the loading dtype, or fp32 after
  `prepare_model_for_kbit_training`.
"""

from __future__ import annotations

from typing import NamedTuple

from vramplan.architecture import traits_of
from vramplan.errors import PlanError
from vramplan.estimator.trainers import adapter_bytes
from vramplan.inventory import Inventory, LinearGroup
from vramplan.models import ModelCache, ModelSpec
from vramplan.plan import TrainingPlan
from vramplan.units import DTYPE_BYTES

CODE_4BIT_BYTES = 16 * 4  # get_4bit_type: 16 fp32 values, one tensor per quantized layer
DYNAMIC_CODE_BYTES = 256 * 4  # create_dynamic_map(), copied into every double-quantized layer's state2
DQ_BLOCKSIZE = 256
ADAPTER_BYTES = 4  # LoRA A/B are fp32 whatever the base dtype (peft autocast_adapter_dtype=True)
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")


def transformers_model(model: ModelSpec, plan: TrainingPlan) -> ModelSpec:
    """The model the plan's transformers version builds (`experts_v4.transformers_model`): under transformers 5,
    `model` itself, so experts_v4 (and its spec class) is loaded for `--transformers 4` plans only."""
    if plan.transformers != 4:
        return model
    from vramplan.estimator.experts_v4 import transformers_model as as_built

    return as_built(model, plan)


# peft 0.21 `utils/transformers_weight_conversion.py` (`_convert_peft_config_moe`): transformers 5 fused the v4
# expert linears (`MoELayout.v4_linears`: Mixtral w1/w3/w2, Qwen-MoE gate_proj/up_proj/down_proj) into 3-D
# parameters and made the router `gate` a custom module. A target naming them, or "all-linear" (which matched them
# on v4), is moved to `target_parameters`: LoRA on `experts.gate_up_proj` (rank and alpha x2),
# `experts.down_proj`, `gate.weight`; the names leave `target_modules` (so qwen2_moe's shared-expert linears of
# those names are not wrapped).
def _v4_expert_names(model: ModelSpec) -> tuple[str, ...]:
    moe = traits_of(model).moe
    return moe.v4_linears if moe is not None else ()


def expert_lora_targets(model: ModelSpec, plan: TrainingPlan) -> tuple[tuple[str, ...], bool]:
    """(fused expert parameters LoRA reaches, whether the router weight gets LoRA) under peft 0.21. None under
    transformers 4.x: its experts and router are `nn.Linear`s that peft wraps by name (`experts_v4.py`)."""
    names = _v4_expert_names(model)
    spec = plan.targets or "default"
    if not names or not plan.uses_lora or spec in ("default", "attention") or plan.transformers == 4:
        return (), False
    listed = {*names, "gate"} if spec == "all-linear" else set(spec.split(","))
    gate, up, down = names
    params = (("gate_up_proj",) if gate in listed and up in listed else ()) + (("down_proj",) if down in listed else ())
    return params, "gate" in listed


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def resolve_targets(model: ModelSpec, plan: TrainingPlan) -> tuple[str, ...]:
    """The leaf module names LoRA wraps: 'default', 'attention', 'all-linear' or an explicit list."""
    groups = transformers_model(model, plan).inventory.linear_groups
    spec = plan.targets or "default"
    v4 = _v4_expert_names(model) if plan.transformers == 5 else ()  # under 4.x peft matches the names as they are
    moved = {*v4, "gate"} if v4 else set()
    if spec == "all-linear":  # peft: every nn.Linear but the output layer (MoE: less the names it moves)
        return tuple(n for n in groups if n not in moved)
    tr = traits_of(model)
    if spec == "attention":
        return tuple(n for n in groups if n in ATTENTION_NAMES or n in tr.attention_names)
    if spec == "default":
        # where peft has no default, the query/value projections (a fused qkv where there is one)
        names = tr.peft_default_targets or ((tr.qkv,) if tr.fused_qkv else (tr.q, tr.v))
        return tuple(n for n in names if n in groups)
    names = tuple(n for n in spec.split(",") if n not in moved)
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise PlanError(
            f"--targets: {', '.join(unknown)} not a linear module of {model.name} "
            f"(choose from {', '.join(groups)}, or 'attention', 'all-linear')"
        )
    return names


class StaticMemory(NamedTuple):
    """Memory that exists from load to the end of training (before gradients and optimizer states). A NamedTuple,
    not a dataclass: the class is made on every cold start, and a dataclass's generated methods cost ~0.7 ms."""

    quantized_weights: int
    quant_constants: int
    double_quant_constants: int
    base_weights: int  # every weight kept in 16/32-bit (all of them unless qlora)
    lora_adapters: int
    trainable_numels: tuple[int, ...]  # one entry per trainable tensor
    trainable_dtype_bytes: int
    trainable_shapes: tuple[tuple[int, ...], ...]  # the same tensors' shapes (Adafactor factors >= 2-D ones)
    quantized_groups: tuple[LinearGroup, ...]  # the 4-bit (or int8) linears, by leaf name
    lora_groups: tuple[LinearGroup, ...]  # the LoRA-wrapped linears, by leaf name
    # bytes per element of each trainable tensor where they differ (modules_to_save copies keep the base dtype);
    # empty: all `trainable_dtype_bytes`
    trainable_dtypes: tuple[int, ...] = ()

    @property
    def dtypes(self) -> tuple[int, ...]:
        """Bytes per element of every trainable tensor, in `trainable_numels` order."""
        return self.trainable_dtypes or (self.trainable_dtype_bytes,) * len(self.trainable_numels)

    @property
    def trainable_bytes(self) -> int:
        """The trainable tensors' bytes: also what their gradients take."""
        return sum(n * d for n, d in zip(self.trainable_numels, self.dtypes))

    @property
    def weights_total(self) -> int:
        return self.quantized_weights + self.quant_constants + self.double_quant_constants + self.base_weights

    @property
    def total(self) -> int:
        return self.weights_total + self.lora_adapters


def quantized_layer_bytes(n: int, blocksize: int, double_quant: bool) -> tuple[int, int, int]:
    """(packed weight, quant constants, double-quant constants) of one 4-bit linear of n weights."""
    blocks = _ceil_div(n, blocksize)
    packed = (n + 1) // 2
    if not double_quant:
        return packed, blocks * 4 + CODE_4BIT_BYTES, 0
    # uint8 absmax + code; state2: fp32 absmax per 256, its own copy of the dynamic code, a scalar fp32 offset
    return packed, blocks + CODE_4BIT_BYTES, _ceil_div(blocks, DQ_BLOCKSIZE) * 4 + DYNAMIC_CODE_BYTES + 4


def int8_layer_bytes(n_out: int, n_in: int) -> tuple[int, int]:
    """(int8 weight CB, fp32 row statistics SCB) of one `Linear8bitLt` [n_out, n_in]: `int8_vectorwise_quant`."""
    return n_out * n_in, n_out * 4


def non_quantized_dtype_bytes(plan: TrainingPlan) -> int:
    if plan.kbit and plan.kbit_upcast:
        return 4  # prepare_model_for_kbit_training upcasts fp16/bf16 params to fp32
    return DTYPE_BYTES[plan.param_dtype]


def rotary_embeddings(model: ModelSpec) -> tuple[int, int]:
    """(rotary embeddings, rotary dim): Gemma 3 has a second, local one; `partial_rotary_factor` shrinks the dim
    (GPT-NeoX's `rotary_pct` too: the traits carry the attention's `rotary_ndims`)."""
    factor = model.config.get("partial_rotary_factor") or traits_of(model).rotary_factor
    dim = int(model.head_dim * float(factor))
    return traits_of(model).rotary_tables, dim


def rotary_buffer_bytes(model: ModelSpec) -> int:
    """`inv_freq` and `original_inv_freq`: fp32 buffers of rotary_dim / 2 (not parameters: never upcast or
    quantized)."""
    tables, dim = rotary_embeddings(model)
    return tables * 2 * (dim // 2) * 4


_STATIC_CACHE = ModelCache(4096)
_STATIC_FIELDS = ("method", "param_dtype", "quant_blocksize", "double_quant", "kbit_upcast", "rank", "targets",
                  "trainer", "use_dora", "trainable_tokens", "modules_to_save", "transformers", "load_in_8bit")


def static_memory(model: ModelSpec, plan: TrainingPlan) -> StaticMemory:
    """Cached per model object and the plan fields that matter (the advisor asks for many plans)."""
    key = tuple(getattr(plan, f) for f in _STATIC_FIELDS)
    return _STATIC_CACHE.get(model, key, lambda: _static_memory(model, plan))


def _static_memory(model: ModelSpec, plan: TrainingPlan) -> StaticMemory:
    # --transformers 4: each expert an nn.Linear (experts_v4.transformers_model): quantized and wrapped as such
    spec = transformers_model(model, plan)
    inv: Inventory = spec.inventory
    groups = inv.linear_groups
    targets = resolve_targets(model, plan) if plan.uses_lora else ()
    q_w, q_c, q_dq, quantized_numel = _quantized_bytes(inv, plan)
    quantized: tuple[LinearGroup, ...] = tuple(groups.values()) if plan.kbit else ()
    base = (inv.total_numel - quantized_numel) * non_quantized_dtype_bytes(plan) + rotary_buffer_bytes(model)
    base += inv.buffer_bytes
    if plan.trainable_tokens:  # TrainableTokensLayer.trainable_tokens_original: the original rows, a buffer that
        base += plan.trainable_tokens * model.hidden_size * adapter_bytes(plan)  # peft casts with the adapters
    lora_groups = tuple(groups[n] for n in targets)
    lora_numels, lora_shapes = _adapter_tensors(model, spec, plan, targets, lora_groups)
    dtypes: tuple[int, ...] = ()
    saved = saved_tensors(model, plan)
    if plan.method == "full":
        trainable = tuple(t.numel for t in inv.tensors)
        shapes = tuple(t.shape for t in inv.tensors)
        trainable_bytes = DTYPE_BYTES[plan.param_dtype]
    else:
        trainable, shapes, trainable_bytes = tuple(lora_numels), tuple(lora_shapes), adapter_bytes(plan)
        if saved:  # the copies keep the original's dtype (ModulesToSaveWrapper: deepcopy, no adapter cast)
            nq = non_quantized_dtype_bytes(plan)
            dtypes = (trainable_bytes,) * len(trainable) + (nq,) * len(saved)
            trainable += tuple(t.numel for t in saved)
            shapes += tuple(t.shape for t in saved)
    return StaticMemory(
        quantized_weights=q_w,
        quant_constants=q_c,
        double_quant_constants=q_dq,
        base_weights=base,
        # the adapters and the modules_to_save copies: the trainable weights peft adds
        lora_adapters=sum(lora_numels) * adapter_bytes(plan) + sum(t.numel for t in saved) * (
            non_quantized_dtype_bytes(plan)),
        trainable_numels=trainable,
        trainable_dtype_bytes=trainable_bytes,
        trainable_shapes=shapes,
        quantized_groups=quantized,
        lora_groups=lora_groups,
        trainable_dtypes=dtypes,
    )


def _quantized_bytes(inv: Inventory, plan: TrainingPlan) -> tuple[int, int, int, int]:
    """(packed weights, quant constants, double-quant constants, quantized elements) of a k-bit base: every linear
    4-bit (QLoRA: bitsandbytes Linear4bit) or int8 with fp32 row scales (Linear8bitLt)."""
    q_w = q_c = q_dq = 0
    quantized_numel = 0
    if plan.method == "qlora":
        for t in inv.tensors:
            if t.role == "linear":
                w, c, dq = quantized_layer_bytes(t.numel, plan.quant_blocksize, plan.double_quant)
                q_w, q_c, q_dq = q_w + w, q_c + c, q_dq + dq
                quantized_numel += t.numel
    elif plan.load_in_8bit:  # Linear8bitLt: the same linears, int8 + fp32 row scales
        for t in inv.tensors:
            if t.role == "linear":
                w, c = int8_layer_bytes(t.shape[0], t.numel // t.shape[0])
                q_w, q_c = q_w + w, q_c + c
                quantized_numel += t.numel
    return q_w, q_c, q_dq, quantized_numel


def _adapter_tensors(model: ModelSpec, spec: ModelSpec, plan: TrainingPlan, targets, lora_groups
                     ) -> tuple[list[int], list[tuple[int, ...]]]:
    """(numels, shapes) of every trainable tensor peft adds: LoRA's A and B per wrapped linear (`spec`: the model
    as `--transformers` builds it), DoRA's magnitudes, trainable tokens' delta, the experts' ParamWrapper."""
    inv = spec.inventory
    lora_numels: list[int] = []
    lora_shapes: list[tuple[int, ...]] = []
    r = plan.rank or 0
    for g in lora_groups if spec is model else ():
        per_in, per_out = g.in_features // g.count, g.out_features // g.count
        for _ in range(g.count):
            lora_numels += [r * per_in, per_out * r]
            lora_shapes += [(r, per_in), (per_out, r)]
    for t in inv.tensors if spec is not model else ():  # 4.x experts: Qwen-MoE's shared expert has their names
        if t.role == "linear" and t.module in targets:  # but not their sizes, so one tensor at a time
            lora_numels += [r * t.shape[1], t.shape[0] * r]
            lora_shapes += [(r, t.shape[1]), (t.shape[0], r)]
    if plan.use_dora:  # peft DoraLinearLayer.update_layer: a magnitude vector, the fp32 norm of each output row
        for g in lora_groups:
            lora_numels += [g.out_features // g.count] * g.count
            lora_shapes += [(g.out_features // g.count,)] * g.count
    if plan.trainable_tokens:  # peft TrainableTokensLayer: an fp32 delta of the chosen embedding rows
        if model.tied_embeddings:
            raise PlanError("--trainable-tokens with tied embeddings (peft also wraps the tied lm_head) is not "
                            "modelled yet; untie them or leave it out")
        lora_numels.append(plan.trainable_tokens * model.hidden_size)
        lora_shapes.append((plan.trainable_tokens, model.hidden_size))
    experts, router = expert_lora_targets(model, plan) if plan.uses_lora else ((), False)
    for t in inv.tensors:  # ParamWrapper: lora_A (r' x E, in), lora_B (out, r' x E); r' = r x fused linears
        wrapped = (t.role == "experts" and t.name.rsplit(".", 1)[-1] in experts) or (t.role == "router" and router)
        if wrapped:
            e, n_out, n_in = (1, *t.shape) if len(t.shape) == 2 else t.shape
            rr = r * e * (2 if t.name.endswith("gate_up_proj") else 1)
            lora_numels += [rr * n_in, n_out * rr]
            lora_shapes += [(rr, n_in), (n_out, rr)]
    return lora_numels, lora_shapes


_SAVED_ROLES = {"embed_tokens": "embedding", "lm_head": "lm_head"}


def saved_tensors(model: ModelSpec, plan: TrainingPlan) -> tuple:
    """The parameters `modules_to_save` copies: the model's input embedding (`embed_tokens`) and/or output head
    (`lm_head`), by role (GPT-NeoX calls them embed_in/embed_out). Tied embeddings are refused: peft then wraps
    both modules around one shared copy (`_add_modules_to_save_to_tie`), which is not modelled yet."""
    if not plan.modules_to_save or plan.method == "full":
        return ()
    if model.tied_embeddings:
        raise PlanError("--modules-to-save with tied embeddings (peft shares one copy between the embedding and "
                        "lm_head) is not modelled yet; untie them or leave it out")
    roles = {_SAVED_ROLES[n] for n in plan.modules_to_save.split(",")}
    return tuple(t for t in model.inventory.tensors if t.role in roles)


def saves_module(plan: TrainingPlan, name: str) -> bool:
    """Whether the plan's `modules_to_save` holds `name` ('embed_tokens' or 'lm_head')."""
    return plan.method != "full" and name in (plan.modules_to_save or "").split(",")


def unquantized_experts_note(model: ModelSpec, plan: TrainingPlan) -> str | None:
    """QLoRA of an MoE under transformers 5: the fused 3-D experts are not `nn.Linear`, so bitsandbytes leaves
    them in 16-bit (`replace_with_bnb_linear`) and peft's kbit upcast makes them fp32. Under transformers 4.x
    each expert was an `nn.Linear` and was quantized. An 8-bit base (`Linear8bitLt`) leaves them alike. None
    when it does not apply."""
    if not plan.kbit:
        return None
    inv = transformers_model(model, plan).inventory  # none under transformers 4.x: each expert an nn.Linear
    numel = inv.numel_by_role.get("experts", 0)
    if not numel:
        return None
    held = numel * non_quantized_dtype_bytes(plan)
    bits = "fp32 (peft's kbit upcast)" if non_quantized_dtype_bytes(plan) == 4 else plan.param_dtype
    if plan.load_in_8bit:  # int8 CB + fp32 SCB per output row of each expert linear
        rows = sum(t.numel // t.shape[-1] for t in inv.tensors if t.role == "experts")
        v4, how, base = numel + rows * 4, "in int8", "an 8-bit base"
    else:
        v4, how, base = sum(quantized_layer_bytes(numel, plan.quant_blocksize, plan.double_quant)), "in 4 bits", "QLoRA"
    return (f"MoE experts stay {bits} under {base}: {held / 2**30:.1f} GiB; transformers 5 stores them as fused "
            f"3-D parameters, which bitsandbytes does not quantize (only nn.Linear); under transformers 4.x each "
            f"expert was an nn.Linear and took about {v4 / 2**30:.1f} GiB {how}"
            + ("; --no-kbit-upcast keeps them 16-bit" if non_quantized_dtype_bytes(plan) == 4 else ""))
