"""config.json fields of architectures with no hand-written spec, for the accuracy grid's fallback cases.

Shape fields as the hub's config.json files carry them (transformers 5 maps `rotary_pct` / `partial_rotary_factor`
into `rope_parameters` on load). Where a config turns on attention or embedding dropout, the grid's copy turns it
off (named in the slug): the CPU tracer runs sdpa's math path for attention dropout (CUDA's flash kernel saves
only its RNG state), and embedding dropout is a model-level op the estimator does not replay yet.
"""

from __future__ import annotations

ARCH_CONFIGS: dict[str, dict] = {
    # EleutherAI/pythia-1.4b: GPT-NeoX, parallel residual with two LayerNorms, fused query_key_value, 25% rotary
    "pythia-1.4b": {
        "model_type": "gpt_neox", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
        "num_attention_heads": 16, "vocab_size": 50304, "rotary_pct": 0.25, "rotary_emb_base": 10000,
        "max_position_embeddings": 2048, "use_parallel_residual": True, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "tie_word_embeddings": False, "attention_dropout": 0.0, "hidden_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 0,
    },
    # allenai/OLMo-2-1124-7B: post-norms, q/k RMSNorm over the whole projection
    "olmo2-7b": {
        "model_type": "olmo2", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 100352,
        "max_position_embeddings": 4096, "rope_theta": 500000, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "attention_bias": False, "tie_word_embeddings": False, "pad_token_id": 100277, "eos_token_id": 100257,
    },
    # bigcode/starcoder2-3b (attention and embedding dropout 0.1 turned off; residual dropout 0.1 kept)
    "starcoder2-3b-noattndrop": {
        "model_type": "starcoder2", "hidden_size": 3072, "intermediate_size": 12288, "num_hidden_layers": 30,
        "num_attention_heads": 24, "num_key_value_heads": 2, "vocab_size": 49152, "use_bias": True,
        "hidden_act": "gelu_pytorch_tanh", "sliding_window": 4096, "max_position_embeddings": 16384,
        "rope_theta": 999999.4420358813, "norm_epsilon": 1e-5, "residual_dropout": 0.1,
        "embedding_dropout": 0.0, "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 0,
    },
    # microsoft/phi-2: parallel residual with one shared LayerNorm, 40% rotary, gelu_new, residual dropout 0.1
    "phi-2": {
        "model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 51200,
        "partial_rotary_factor": 0.4, "hidden_act": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.0,
        "attention_dropout": 0.0, "qk_layernorm": False, "layer_norm_eps": 1e-5, "max_position_embeddings": 2048,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 50256, "eos_token_id": 50256,
    },
    # stabilityai/stablelm-2-1_6b: LayerNorm with bias, q/k/v bias, gated silu MLP, 25% rotary
    "stablelm2-1.6b": {
        "model_type": "stablelm", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 100352,
        "partial_rotary_factor": 0.25, "hidden_act": "silu", "use_qkv_bias": True, "qk_layernorm": False,
        "use_parallel_residual": False, "layer_norm_eps": 1e-5, "max_position_embeddings": 4096,
        "rope_theta": 10000, "tie_word_embeddings": False, "hidden_dropout": 0.0, "attention_dropout": 0.0,
        "bos_token_id": 100257, "eos_token_id": 100257,
    },
    # ibm-granite/granite-3.1-2b-base shape: Llama-like with muP multipliers (embedding 12, residual 0.22 on
    # every branch, attention 1/64 as the sdpa scale, logits / 8), tied embeddings (attention dropout 0.1 in the
    # hub config: off in this copy)
    "granite-3.1-2b-noattndrop": {
        "model_type": "granite", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 40,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 49155, "hidden_act": "silu",
        "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.015625,
        "logits_scaling": 8.0, "rms_norm_eps": 1e-5, "rope_theta": 5000000.0, "max_position_embeddings": 131072,
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": True,
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
    },
    # CohereForAI/aya-23-8B shape (Cohere): parallel block under one CohereLayerNorm (fp32 tensor ops, no bias),
    # q/k rotated in fp32 with interleaved halves, logits * logit_scale, tied 256k-row embedding
    "aya-23-8b": {
        "model_type": "cohere", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 256000, "logit_scale": 0.125,
        "layer_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 8192, "use_qk_norm": False,
        "attention_bias": False, "attention_dropout": 0.0, "hidden_act": "silu", "tie_word_embeddings": True,
        "bos_token_id": 5, "eos_token_id": 255001, "pad_token_id": 0,
    },
    # bigcode/starcoder (GPT-BigCode, 15.5B): multi-query attention (one kv head) in a fused c_attn, learned
    # positions (wpe), LayerNorm with bias, plain gelu_pytorch_tanh MLP, tied embeddings, layers under
    # transformer.h; the [8192, 8192] bool causal-mask buffer. Attention and embedding dropout (0.1 in the hub
    # config) off in this copy; residual dropout 0.1 kept
    "starcoder-15b-noattndrop": {
        "model_type": "gpt_bigcode", "n_embd": 6144, "n_head": 48, "n_layer": 40, "n_inner": 24576,
        "vocab_size": 49152, "n_positions": 8192, "multi_query": True, "activation_function": "gelu_pytorch_tanh",
        "layer_norm_epsilon": 1e-5, "scale_attn_weights": True, "tie_word_embeddings": True, "attn_pdrop": 0.0,
        "embd_pdrop": 0.0, "resid_pdrop": 0.1, "bos_token_id": 0, "eos_token_id": 0,
    },
}
