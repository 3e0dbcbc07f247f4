"""Hand-derived byte counts for the measuring tests, each from the library code that allocates the bytes.

Imported by the tests in this folder (pytest puts the folder on sys.path); no torch needed.
"""

from __future__ import annotations

from math import ceil, prod


def llama_linears(cfg: dict) -> dict[str, tuple[int, int]]:
    """Every nn.Linear of one llama decoder layer: name -> (out_features, in_features)."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * (h // cfg["num_attention_heads"])
    return {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
            "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}


def four_bit_bytes(out_features: int, in_features: int, double_quant: bool, blocksize: int = 64) -> int:
    """bitsandbytes.functional.quantize_4bit: packed uint8 [(n+1)//2, 1] + its QuantState's tensors.

    code: the 16-entry fp32 NF4/FP4 table (`get_4bit_type`, a new tensor per layer). Without double
    quantization: fp32 absmax per block. With it: absmax quantized to uint8 (`quantize_blockwise`, blocks of
    256), its fp32 offset (0-dim mean), fp32 nested absmax per 256 blocks and a copy of the 256-entry fp32
    dynamic map (`code.to(device, copy=True)`).
    """
    n = out_features * in_features
    blocks = ceil(n / blocksize)
    packed = (n + 1) // 2
    if not double_quant:
        return packed + 4 * blocks + 16 * 4
    return packed + blocks + 4 + 4 * ceil(blocks / 256) + 256 * 4 + 16 * 4


def dense_llama_params(cfg: dict) -> int:
    """Parameters that stay dense under QLoRA: embeddings, lm_head (untied), the 2L+1 RMSNorm weights."""
    h, v, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    return 2 * v * h + (2 * layers + 1) * h


def rotary_buffer_bytes(cfg: dict) -> int:
    """LlamaRotaryEmbedding: fp32 inv_freq and original_inv_freq, head_dim/2 entries each."""
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * (head_dim // 2) * 4


def lora_bytes(cfg: dict, targets: list[str], rank: int) -> int:
    """peft LoRA A [r, in] and B [out, r] per targeted linear, fp32 (get_peft_model autocast_adapter_dtype)."""
    shapes = llama_linears(cfg)
    return cfg["num_hidden_layers"] * sum(4 * rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def qlora_load_bytes(cfg: dict, *, double_quant: bool, upcast: bool, targets: list[str], rank: int = 8,
                     eight_bit_optimizer: bool = True, blocksize: int = 64) -> int:
    """Live bytes after from_pretrained(4-bit) + prepare_model_for_kbit_training + get_peft_model + optimizer."""
    quantized = cfg["num_hidden_layers"] * sum(
        four_bit_bytes(o, i, double_quant, blocksize) for o, i in llama_linears(cfg).values())
    dense = dense_llama_params(cfg) * (4 if upcast else 2)  # peft casts non-4-bit bf16 params to fp32
    qmaps = 2 * 256 * 4 if eight_bit_optimizer else 0  # Optimizer8bit.fill_qmap in __init__
    return quantized + dense + rotary_buffer_bytes(cfg) + lora_bytes(cfg, targets, rank) + qmaps


def optimizer_state_bytes(name: str, shapes: list[tuple[int, ...]], param_bytes: int) -> int:
    """Bytes of optimizer state for trainable params of these shapes (element size `param_bytes`)."""
    total = 0
    for shape in shapes:
        n = prod(shape)
        if name in ("adamw", "adamw_fused"):
            total += 2 * n * param_bytes + 4  # exp_avg, exp_avg_sq in the param dtype + 0-dim fp32 step
        elif name in ("adamw_8bit", "paged_adamw_8bit"):
            total += 2 * n + 2 * 4 * ceil(n / 256) if n >= 4096 else 2 * 4 * n  # min_8bit_size=4096
        elif name == "lion_8bit":
            total += n + 4 * ceil(n / 256) if n >= 4096 else 4 * n
        elif name == "paged_adamw_32bit":
            total += 2 * 4 * n  # fp32 states whatever the param dtype
        elif name == "adafactor":
            total += 4 * (shape[0] + shape[1]) if len(shape) >= 2 else 4 * n
            total += 4  # 0-dim fp32 RMS
        elif name == "sgd_momentum":
            total += n * param_bytes
        elif name != "sgd":
            raise ValueError(name)
    return total
