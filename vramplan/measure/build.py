"""Build the model a transformers + peft + bitsandbytes fine-tuning script trains, through the libraries' own code.

`build_model` makes the transformers model from a config.json dict with random weights, quantized to 4 bits for
QLoRA the way `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))` does:
transformers' `Bnb4BitHfQuantizer.preprocess_model` swaps every `nn.Linear` except the output embedding (its
`get_keys_to_not_convert`: tied weights, the last parameter, `get_output_embeddings()`) for `bnb.nn.Linear4bit`,
and `Bnb4bitQuantize.convert` quantizes each weight with `bnb.nn.Params4bit(...).to(device)`.

An 8-bit base (`plan.load_in_8bit`) goes the same way through `Bnb8BitHfQuantizer`: `bnb.nn.Linear8bitLt`
(has_fp16_weights=False, threshold 6.0), each weight loaded by `Bnb8bitQuantize.convert` as
`bnb.nn.Int8Params(weight).to(device)` (`int8_vectorwise_quant`: int8 CB, fp32 SCB per row).

With `trace=True` the model is built on the meta device and materialised with `module.to_empty` inside the
caller's `FakeTensorMode`. `Params4bit` cannot wrap a FakeTensor (`_make_subclass` refuses a tensor that already
has a Python object), so a traced 4-bit layer gets a plain fake `Parameter` carrying the same attributes
(`quant_state`, `blocksize`, `quant_type`, ...) and the `QuantState` that bitsandbytes' own
`functional.quantize_4bit` returns for a fake weight: the same tensors, shapes and dtypes as a real run.
"""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import torch

from vramplan.errors import MeasurementError, did_you_mean
from vramplan.plan import TrainingPlan

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def hf_config(config: dict):
    """`AutoConfig.for_model(**config)`: a config.json dict must name a `model_type` transformers knows."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not model_type:
        raise MeasurementError("config: no 'model_type' key; pass a transformers config.json dict")
    if model_type not in CONFIG_MAPPING:
        hint = did_you_mean(model_type, CONFIG_MAPPING.keys())
        raise MeasurementError(f"config: model_type '{model_type}' is unknown to transformers{hint}")
    try:
        return AutoConfig.for_model(**config)
    except (ValueError, TypeError) as exc:
        raise MeasurementError(f"config: {exc}") from None


def build_model(config: dict, plan: TrainingPlan, *, device: str, trace: bool) -> torch.nn.Module:
    """The model as a loading script leaves it: weights in `plan.param_dtype`, 4-bit linears for qlora."""
    from transformers import AutoModelForCausalLM

    cfg = hf_config(config)
    attn = plan.attn
    if attn == "sdpa" and not getattr(AutoModelForCausalLM._model_mapping.get(type(cfg), None), "_supports_sdpa", True):
        attn = "eager"  # what transformers picks by default where sdpa is unsupported (Gemma-2: softcapping)
    try:
        with _skeleton(trace), torch.device("meta" if trace else device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype(plan.param_dtype),
                                                     attn_implementation=attn)
    except (ValueError, AssertionError) as exc:  # not a causal LM, an unsupported attention, a bad size
        raise MeasurementError(f"config: {exc}") from None
    if plan.method == "qlora" or plan.load_in_8bit:
        _quantize(model, plan, device=device, trace=trace)
    elif trace:
        _materialize(model, device)
    model.train()  # from_pretrained leaves eval mode; Trainer.train() switches to train mode
    return model


def _skeleton(trace: bool):
    """Meta tensors must be made outside FakeTensorMode (which would turn them into FakeTensors on 'meta')."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily() if trace else contextlib.nullcontext()


def _materialize(model: torch.nn.Module, device: str) -> None:
    """meta -> fake tensors inside FakeTensorMode: `module.to_empty` with a factory that does not take the meta
    tensor as input (FakeTensorMode refuses non-fake inputs), then re-tie the weights that it untied."""
    model._apply(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device))
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def bnb_config(plan: TrainingPlan):
    from transformers import BitsAndBytesConfig

    if plan.load_in_8bit:  # llm_int8_threshold 6.0, llm_int8_has_fp16_weight False: the defaults
        return BitsAndBytesConfig(load_in_8bit=True)

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=plan.quant,
        bnb_4bit_use_double_quant=plan.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(plan.compute_dtype or plan.param_dtype),
        bnb_4bit_quant_storage=torch.uint8,
    )


def _quantize(model: torch.nn.Module, plan: TrainingPlan, *, device: str, trace: bool) -> None:
    """What from_pretrained's bnb path does: preprocess (swap modules), load+quantize weights, postprocess."""
    import bitsandbytes as bnb
    from transformers.quantizers.auto import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(bnb_config(plan), pre_quantized=False)
    dense = dict(model.named_parameters())  # the weights a checkpoint would supply
    with _skeleton(trace):
        quantizer.preprocess_model(model, dtype=torch_dtype(plan.param_dtype), device_map={"": device})
    if plan.load_in_8bit:
        layers = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}
        if trace:
            _load_traced_8bit(model, layers, dense, device)
        else:
            _load_real_4bit(model, quantizer, layers, dense)  # Bnb8bitQuantize.convert: the same call shape
        model.hf_quantizer = quantizer
        quantizer.postprocess_model(model)
        return
    layers = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    for module in layers.values():
        # BitsAndBytesConfig has no blocksize knob (bitsandbytes' default is 64); the plan may set another.
        module.weight.blocksize = plan.quant_blocksize
    if trace:
        _load_traced_4bit(model, layers, dense, device)
    else:
        _load_real_4bit(model, quantizer, layers, dense)
    model.hf_quantizer = quantizer
    quantizer.postprocess_model(model)


def _load_real_4bit(model, quantizer, layers: dict, dense: dict) -> None:
    """transformers' `Bnb4bitQuantize.convert`: `Params4bit(weight, **meta_param.__dict__).to(device)`."""
    convert = quantizer.get_quantize_ops()
    for name, module in layers.items():
        key = f"{name}.weight"
        module.weight = convert.convert({key: dense.pop(key)}, full_layer_name=key, model=model)[key]
        if module.bias is not None:
            module.bias = torch.nn.Parameter(dense.pop(f"{name}.bias").data)  # loaded params require grad


def _load_traced_4bit(model, layers: dict, dense: dict, device: str) -> None:
    """Materialise the skeleton as FakeTensors, then give each 4-bit layer its fake packed weight."""
    templates = {}
    for name, module in layers.items():
        templates[name] = module.weight
        module.weight = None  # quantized below; keeps the parameter's place in the module
        if module.bias is not None:
            module.bias = dense[f"{name}.bias"]  # the checkpoint's dtype, as from_pretrained loads it
    _materialize(model, device)
    for name, module in layers.items():
        _install_traced_4bit(module, templates[name], dense[f"{name}.weight"].dtype, device)


def _load_traced_8bit(model, layers: dict, dense: dict, device: str) -> None:
    """`Int8Params` cannot wrap a FakeTensor either: each traced 8-bit layer gets a fake int8 `Parameter` with
    the attributes `Linear8bitLt.forward` reads (`CB`, `SCB`, `has_fp16_weights`), made by bitsandbytes' own
    `int8_vectorwise_quant` of a fake dense weight, as `Int8Params._quantize` does."""
    import bitsandbytes as bnb

    for name, module in layers.items():
        module.weight = None
        if module.bias is not None:
            module.bias = dense[f"{name}.bias"]
    _materialize(model, device)
    for name, module in layers.items():
        weight = torch.empty((module.out_features, module.in_features), dtype=dense[f"{name}.weight"].dtype,
                             device=device)
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16))
        del weight
        param = torch.nn.Parameter(cb, requires_grad=False)
        param.CB, param.SCB, param.has_fp16_weights = cb, scb, False
        module.weight = param


def _install_traced_4bit(module, template, dtype: torch.dtype, device: str) -> None:
    """Quantize a fake dense weight with bitsandbytes' own `quantize_4bit`, as `Params4bit._quantize` does.
    The weight is [out, in] (`Bnb4bitQuantize` transposes a GPT-2 `Conv1D` weight the same way)."""
    import bitsandbytes as bnb

    weight = torch.empty((module.out_features, module.in_features), dtype=dtype, device=device)
    packed, state = bnb.functional.quantize_4bit(
        weight, blocksize=template.blocksize, compress_statistics=template.compress_statistics,
        quant_type=template.quant_type, quant_storage=template.quant_storage,
    )
    del weight
    param = torch.nn.Parameter(packed, requires_grad=False)
    for key, value in template.__dict__.items():
        setattr(param, key, value)  # blocksize, compress_statistics, quant_type, quant_storage, module
    param.quant_state = state
    param.bnb_quantized = True
    module.weight = param
    module.quant_state = state


def resolve_targets(model: torch.nn.Module, targets: str) -> list[str] | str | None:
    """peft `target_modules` for the plan's shorthand: 'default' -> peft's per-architecture default (its
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING; where peft has none, as for phi3 and the MoE families,
    the query/value projections the estimator assumes), 'all-linear' -> peft's shorthand, 'attention' -> the
    linears inside the first attention block."""
    if targets == "default":
        return _default_targets(model)
    if targets == "all-linear":
        return "all-linear"
    if targets == "attention":
        return _attention_linears(model)
    return targets.split(",")


def _default_targets(model: torch.nn.Module) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    default = PEFT_DEFAULTS.get(model.config.model_type)
    if default is None:
        default = ["qkv_proj"] if "qkv_proj" in names else ["q_proj", "v_proj"]
    return [n for n in default if n in names]


def _attention_linears(model: torch.nn.Module) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    for module in model.modules():
        if "attention" in type(module).__name__.lower():
            names = [n for n, c in module.named_children() if isinstance(c, (torch.nn.Linear, Conv1D))]
            if names:
                return names
    raise MeasurementError("targets: no attention projections found; give a comma list of module names")



@contextlib.contextmanager
def traced_peft_init():
    """peft's `DoraLinearLayer.update_layer` deep-copies a `Linear4bit` before dequantizing it for the initial
    weight norm ("otherwise, FSDP will throw an error"); a deep copy of a FakeTensor lands in another fake mode,
    so under tracing the layer is used in place (the copy only lived during initialisation, before the load is
    measured). Outside FakeTensorMode nothing changes."""
    from torch._guards import detect_fake_mode

    if detect_fake_mode() is None:
        yield
        return
    from peft.tuners.lora import dora
    from peft.utils import other

    if not getattr(dora.dequantize_module_weight, "_vramplan", False):
        dora.dequantize_module_weight = _traced_dequantize(dora.dequantize_module_weight)
    original, original_copy = dora.deepcopy, other.copy
    dora.deepcopy = lambda module: module
    # ModulesToSaveWrapper.update: `copy.deepcopy(self.original_module)`, a real copy that stays (the trainable
    # module): its parameters are cloned in the active fake mode instead
    other.copy = SimpleNamespace(deepcopy=_fake_deepcopy, copy=copy.copy)
    try:
        yield
    finally:
        dora.deepcopy, other.copy = original, original_copy


def _fake_deepcopy(obj, memo=None):
    """`copy.deepcopy` of a module whose tensors are fake: every parameter and buffer cloned in the active fake
    mode (the same bytes a real deep copy allocates); anything else goes to `copy.deepcopy`."""
    if not isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj, memo)
    memo = dict(memo or {})
    for p in obj.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
    for b in obj.buffers():
        memo[id(b)] = b.clone()
    return copy.deepcopy(obj, memo)


def _traced_dequantize(dequantize):
    """peft's `dequantize_module_weight` recognises a 4-bit weight by its class (`Params4bit`); a traced 4-bit
    layer's weight is a fake tensor carrying the same `quant_state` (see `_install_traced_4bit`), so
    it is dequantized here the way `dequantize_bnb_weight` does it: `bnb.functional.dequantize_4bit(weight,
    quant_state)`. Every other weight goes to peft's function unchanged."""
    from torch._subclasses.fake_tensor import is_fake

    def wrapper(module):
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and is_fake(weight) and type(weight).__name__ != "Params4bit":
            import bitsandbytes as bnb

            return bnb.functional.dequantize_4bit(weight.data, state)
        return dequantize(module)

    wrapper._vramplan = True
    return wrapper
