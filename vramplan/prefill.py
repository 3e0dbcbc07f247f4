"""The prefill's temporaries: what one layer of generate's prefill forward allocates under no_grad, replayed as
alloc/free steps (transformers 5.x modeling code, peft 0.21's LoRA forward). `vramplan.inference` adds them to
the weights and the KV cache; the module docstring there names what is modelled and ignored. The two facts both
read (which layers slide: `layer_types`; the adapter as a LoRA plan: `lora_plan`) live here, below it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramplan.models import ModelSpec
from vramplan.units import DTYPE_BYTES

if TYPE_CHECKING:
    from vramplan.inference import InferencePlan


def lora_plan(plan: InferencePlan):
    """The LoRA training plan whose targets and adapter bytes an inference plan's adapter has."""
    from vramplan.plan import make_plan

    return make_plan(method="lora", rank=plan.rank, targets=plan.targets, param_dtype=plan.dtype)


def layer_types(model: ModelSpec) -> list[str]:
    """'sliding_attention' or 'full_attention' per layer, as transformers' config classes fill `layer_types`
    (Gemma 2: every other layer from the first; Gemma 3: five sliding then one full; Qwen: only with
    `use_sliding_window`; others: all sliding when `sliding_window` is set)."""
    cfg, n = model.config, model.num_layers
    if cfg.get("layer_types"):
        return list(cfg["layer_types"])[:n]
    window = cfg.get("sliding_window")
    if model.model_type == "gemma2":
        return ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    if model.model_type == "gemma3_text":
        pattern = int(cfg.get("sliding_window_pattern") or 6)
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    if model.model_type.startswith("qwen"):
        if not cfg.get("use_sliding_window") or not window:
            return ["full_attention"] * n
        first = int(cfg.get("max_window_layers") or n)
        return ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    return ["sliding_attention" if window else "full_attention"] * n


def _live_peak(steps: list[tuple[str, int]]) -> int:
    """Replay ('+name', bytes) / ('-name', 0) steps; the peak of the sum of live bytes."""
    live: dict[str, int] = {}
    peak = 0
    for name, nbytes in steps:
        if name.startswith("+"):
            live[name[1:]] = nbytes
            peak = max(peak, sum(live.values()))
        else:
            live.pop(name[1:], None)
    return peak


def _linear(p: str, tokens: int, n_in: int, n_out: int, d: int, rank: int | None, four_bit: bool) -> list:
    """A linear's temporaries; its output stays as f'+{p}'. peft's LoRA forward as in the module docstring."""
    out = [(f"+{p}", tokens * n_out * d)]
    if rank is None:
        return out
    steps = [(f"+{p}.base", tokens * n_out * d)]
    if four_bit:
        steps += [(f"+{p}.clone", tokens * n_out * d), (f"-{p}.base", 0)]
    if d != 4:
        steps.append((f"+{p}.x32", tokens * n_in * 4))
    steps += [(f"+{p}.a", tokens * rank * 4), (f"+{p}.b", tokens * n_out * 4), (f"-{p}.a", 0),
              (f"+{p}.s", tokens * n_out * 4), (f"-{p}.b", 0)]
    if four_bit:  # output.to(result dtype), then result + output
        steps += [(f"+{p}.sd", tokens * n_out * d), (f"-{p}.s", 0), (f"+{p}", tokens * n_out * d)]
    else:  # result + s (promoted to fp32), then .to(result dtype)
        steps += [(f"+{p}.y32", tokens * n_out * 4), (f"-{p}.s", 0), (f"-{p}.base", 0),
                  (f"+{p}", tokens * n_out * d), (f"-{p}.y32", 0)]
    return steps + [(f"-{n}", 0) for n in (f"{p}.base", f"{p}.clone", f"{p}.x32", f"{p}.sd")]


def _mlp_steps(model: ModelSpec, plan: InferencePlan, tokens: int, wrapped: set[str]) -> list:
    """The MLP of one layer under no_grad: LlamaMLP `down(act(gate(x)) * up(x))` (the gate output dies once the
    activation returns), Phi-3's fused `gate_up_proj` (its storage lives while both chunks do), or a plain
    fc1 -> act -> fc2."""
    from vramplan.architecture import traits_of

    tr, d, h, inter = traits_of(model), DTYPE_BYTES[plan.dtype], model.hidden_size, model.intermediate_size
    r, q4 = plan.rank if plan.has_adapter else None, plan.quant == "nf4"

    def lin(name: str, n_in: int, n_out: int) -> list:
        return _linear(name, tokens, n_in, n_out, d, r if name in wrapped else None, q4)

    act = tokens * inter * d
    if tr.gated_mlp and tr.fused_gate_up:
        return [*lin(tr.gate_up, h, 2 * inter), ("+act", act), ("+mul", act), ("-act", 0), *lin(tr.down, inter, h)]
    if tr.gated_mlp:
        return [*lin(tr.gate, h, inter), ("+act", act), (f"-{tr.gate}", 0), *lin(tr.up, h, inter), ("+mul", act),
                ("-act", 0), (f"-{tr.up}", 0), *lin(tr.down, inter, h)]
    return [*lin(tr.up, h, inter), ("+act", act), (f"-{tr.up}", 0), *lin(tr.down, inter, h)]


def _attention_steps(model: ModelSpec, plan: InferencePlan, wrapped: set[str]) -> list:
    """The prefill attention of one layer: q/k/v projections, `apply_rotary_pos_emb` (q*cos + rotate_half(q)*sin:
    four q-sized tensors at its peak), the cache's `torch.cat` copies, then sdpa (its output and fp32 logsumexp,
    `transpose(1, 2).contiguous()` copies it) or eager (`repeat_kv`, scores + mask, fp32 softmax, cast back)."""
    from vramplan.architecture import traits_of

    tr, d, h = traits_of(model), DTYPE_BYTES[plan.dtype], model.hidden_size
    b, p, nq, nkv, hd = plan.batch, plan.prompt, model.num_heads, model.num_kv_heads, model.head_dim
    t, r, q4 = b * p, plan.rank if plan.has_adapter else None, plan.quant == "nf4"
    qb, kb = t * nq * hd * d, t * nkv * hd * d
    steps: list = []
    for name, n_out in ((tr.q, nq * hd), (tr.k, nkv * hd), (tr.v, nkv * hd)):
        steps += _linear(name, t, h, n_out, d, r if name in wrapped else None, q4)
    for x, size in (("q", qb), ("k", kb)):
        steps += [(f"+{x}cos", size), (f"+{x}cat", size), (f"+{x}sin", size), (f"-{x}cos", 0), (f"-{x}cat", 0),
                  (f"+{x}e", size), (f"-{x}sin", 0), (f"-{tr.q if x == 'q' else tr.k}", 0)]
    kv_len = plan.context - 1 if plan.cache == "static" else p
    steps += [("-ke", 0), (f"-{tr.v}", 0)]  # the cache's copies of K and V are counted in the KV bytes
    eager = attention_of(model, plan) == "eager"
    if eager or plan.cache == "static" or _sliding_mask(model, plan):  # a mask: repeat_kv to every query head
        steps += [("+krep", b * nq * kv_len * hd * d), ("+vrep", b * nq * kv_len * hd * d)]
    if eager:
        scores = b * nq * p * kv_len
        # softmax(dtype=float32) casts its input first (`_to_copy`), then `_softmax`, then `.to(query.dtype)`
        steps += [("+sc", scores * d), ("+scm", scores * d), ("-sc", 0), ("+in32", scores * 4),
                  ("+sm32", scores * 4), ("-in32", 0), ("-scm", 0), ("+smd", scores * d), ("-sm32", 0),
                  ("+out", qb), ("-smd", 0)]
    else:
        steps += [("+out", qb), ("+lse", b * nq * p * 4)]
    steps += [("-krep", 0), ("-vrep", 0), ("-qe", 0), ("-lse", 0), ("+outc", qb), ("-out", 0)]
    return steps + _linear(tr.o, t, nq * hd, h, d, r if tr.o in wrapped else None, q4)


def _wrapped(model: ModelSpec, plan: InferencePlan) -> set[str]:
    if not plan.has_adapter:
        return set()
    from vramplan.estimator.weights import resolve_targets

    return set(resolve_targets(model, lora_plan(plan)))


def prefill_activation_bytes(model: ModelSpec, plan: InferencePlan) -> int:
    """The prefill's activations at its peak, beyond weights and KV: the last layer's MLP or attention on top of
    what the model loop holds (`inputs_embeds`, the layer's input, the residual and the norm's output; the
    rotary `cos`/`sin` of every position)."""
    d, t, h = DTYPE_BYTES[plan.dtype], plan.batch * plan.prompt, model.hidden_size
    rope = 2 * t * model.head_dim * d
    wrapped = _wrapped(model, plan)
    held = (2 if model.num_layers > 1 else 1) * t * h * d + rope + prefill_mask_bytes(model, plan)
    eager = attention_of(model, plan) == "eager"
    kv_len = plan.context - 1 if plan.cache == "static" else plan.prompt
    # eager returns its softmaxed weights; the decoder layer's `hidden_states, _ = self.self_attn(...)` keeps them
    weights = plan.batch * model.num_heads * plan.prompt * kv_len * d if eager else 0
    mlp = held + 2 * t * h * d + weights + _live_peak(_mlp_steps(model, plan, t, wrapped))
    attn = held + t * h * d + _live_peak(_attention_steps(model, plan, wrapped))
    return max(mlp, attn)


def prefill_mask_bytes(model: ModelSpec, plan: InferencePlan) -> int:
    """The model-level 4-D mask of the prefill (`masking_utils.create_causal_mask`), held through the forward:
    eager gets [batch, 1, P, kv] in the dtype (`eager_mask`); sdpa needs none over a dynamic cache without
    padding (`_ignore_causal_mask_sdpa`) but a bool [batch, 1, P, kv] over a static cache, and a [1, 1, P, P]
    one over a sliding window the prompt reaches."""
    kv_len = plan.context - 1 if plan.cache == "static" else plan.prompt
    masks = len(set(layer_types(model)))  # one per kind of layer (sliding and full: Gemma 2/3, `layer_types`)
    if attention_of(model, plan) == "eager":
        return masks * plan.batch * plan.prompt * kv_len * DTYPE_BYTES[plan.dtype]
    if plan.cache == "static":
        return masks * plan.batch * plan.prompt * kv_len
    return plan.prompt * plan.prompt if _sliding_mask(model, plan) else 0


def _sliding_mask(model: ModelSpec, plan: InferencePlan) -> bool:
    """sdpa over a dynamic cache gets an explicit bool [1, 1, P, P] mask once the prompt reaches the sliding
    window (`_ignore_causal_mask_sdpa` refuses `kv_length >= local_attention_size`; `estimator.context`)."""
    window = int(model.config.get("sliding_window") or 0)
    return (attention_of(model, plan) == "sdpa" and "sliding_attention" in layer_types(model)
            and window > 0 and plan.prompt >= window)


def attention_of(model: ModelSpec, plan: InferencePlan) -> str:
    """The attention transformers runs: eager where the class has no sdpa path (`estimator.context`)."""
    from vramplan.estimator.context import attn_implementation
    from vramplan.plan import make_plan

    return attn_implementation(model, make_plan(method="lora", attn=plan.attn))
