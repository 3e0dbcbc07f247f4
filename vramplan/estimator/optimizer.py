"""Optimizer states and the temporaries of `optimizer.step()`, per trainable tensor.

- torch `optim/adamw.py` (`_init_group`): `exp_avg`, `exp_avg_sq` = `zeros_like(param)` (parameter dtype);
  `step` is a host tensor unless `fused`/`capturable` (then a 4-byte device scalar per parameter).
  `_multi_tensor_adamw` (foreach, the CUDA default) allocates `exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs)`:
  one more state-sized buffer for every parameter at once. `_fused_adamw` allocates nothing.
- bitsandbytes `optim/optimizer.py` (`Optimizer2State.init_state`): tensors with fewer than `min_8bit_size`
  (4096) elements keep fp32 states; larger ones get uint8 `state1/state2` plus fp32 `absmax1/absmax2` per
  256-element block; the `dynamic`/`udynamic` maps are shared. Paged optimizers (`get_state_buffer`) put states
  of tensors with >= 1e5 elements in CUDA managed memory (`F.get_paged`), which the torch allocator never sees.
- transformers `optimization.py: Adafactor` (scale_parameter=False, relative_step=False, beta1=None): factored
  fp32 row/column second moments for >= 2-D tensors, full fp32 for 1-D; the step works on an fp32 copy of the
  gradient and of the parameter and builds `update` and `-update`: up to four fp32 copies of one tensor at once.
- torch SGD with momentum: one `momentum_buffer` per parameter (parameter dtype); foreach SGD updates in place.
"""

from __future__ import annotations

from typing import NamedTuple

from vramplan.plan import TrainingPlan

MIN_8BIT_SIZE = 4096
PAGED_MIN_NUMEL = 100_000
BNB_BLOCK = 256
QMAP_BYTES = 256 * 4


class OptimizerMemory(NamedTuple):  # not a dataclass: see weights.StaticMemory
    states_bytes: int  # in the torch allocator
    paged_bytes: int  # CUDA managed memory (paged optimizers): can spill to host RAM
    step_temp_bytes: int  # transient during optimizer.step()


def _bnb_states(numel: int, n_states: int, eight_bit: bool, paged: bool) -> tuple[int, int]:
    """(device bytes, paged bytes) of one tensor's bitsandbytes states."""
    if eight_bit and numel >= MIN_8BIT_SIZE:
        blocks = -(-numel // BNB_BLOCK)
        states, absmax = n_states * numel, n_states * blocks * 4
        if paged and numel >= PAGED_MIN_NUMEL:
            return absmax, states
        return states + absmax, 0
    states = n_states * numel * 4
    if paged and numel >= PAGED_MIN_NUMEL:
        return 0, states
    return states, 0


def _adafactor_state(numel: int, shape: tuple[int, ...] | None) -> int:
    """`exp_avg_sq_row` = zeros(shape[:-1]), `exp_avg_sq_col` = zeros(shape[:-2] + shape[-1:]) for >= 2-D
    tensors (fp32: the gradient is upcast before the state is made); a full `exp_avg_sq` otherwise."""
    if shape is None or len(shape) < 2:
        return numel * 4
    lead = 1
    for d in shape[:-2]:
        lead *= d
    return (lead * shape[-2] + lead * shape[-1]) * 4


def optimizer_memory(plan: TrainingPlan, numels: tuple[int, ...], dtype_bytes: int | tuple[int, ...],
                     shapes: tuple[tuple[int, ...], ...] | None = None) -> OptimizerMemory:
    """States and step temporaries for trainable tensors of `numels` elements stored in `dtype_bytes` (one for
    all, or one per tensor: peft's fp32 adapters beside `modules_to_save` copies in the base dtype; torch's
    `zeros_like(param)` states and foreach temporaries follow each parameter's dtype)."""
    opt = plan.optimizer
    dtypes = dtype_bytes if isinstance(dtype_bytes, tuple) else (dtype_bytes,) * len(numels)
    total_bytes = sum(n * d for n, d in zip(numels, dtypes))
    if opt in ("adamw", "adamw_fused"):
        states = 2 * total_bytes
        steps = 4 * len(numels) if opt == "adamw_fused" else 0
        temp = total_bytes if opt == "adamw" else 0
        return OptimizerMemory(states + steps, 0, temp)
    if opt in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit"):
        n_states = 1 if opt == "lion_8bit" else 2
        eight_bit = opt != "paged_adamw_32bit"
        paged = opt.startswith("paged")
        dev = pag = 0
        for n in numels:
            d, p = _bnb_states(n, n_states, eight_bit, paged)
            dev, pag = dev + d, pag + p
        if eight_bit and any(n >= MIN_8BIT_SIZE for n in numels):
            # `init_state` moves the dynamic map (and for two states the unsigned one) to the device
            dev += QMAP_BYTES * n_states
        return OptimizerMemory(dev, pag, 0)
    if opt == "sgd":
        return OptimizerMemory(0, 0, 0)
    if opt == "sgd_momentum":
        return OptimizerMemory(total_bytes, 0, 0)
    if opt == "adafactor":
        shapes = shapes or tuple(None for _ in numels)
        states = sum(_adafactor_state(n, s) for n, s in zip(numels, shapes))
        # Per tensor: fp32 grad copy and fp32 param copy (if 16-bit); `update = grad**2 + eps` is still alive
        # while `_approx_sq_grad` builds the new update from its row factor and column factor.
        temp = 0
        for n, s, d in zip(numels, shapes, dtypes):
            factors = _adafactor_state(n, s) if s is not None and len(s) >= 2 else 0
            temp = max(temp, (2 + (2 if d < 4 else 0)) * n * 4 + factors)
        return OptimizerMemory(states, 0, temp)
    raise AssertionError(opt)
