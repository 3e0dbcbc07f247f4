"""Activation offloading (`--activation-offloading`: TRL `activation_offloading=True`), replayed on the tape.

TRL 1.16 `SFTTrainer`/`DPOTrainer.training_step` run `Trainer.training_step` (forward and backward) inside
`get_act_offloading_ctx_manager(model)` (trl/models/activation_offloading.py, from torchtune): an
`OffloadActivations` saved-tensors hook with pinned memory and a second stream (`use_streams=True`). Its rules,
as `pack_tensor` and `unpack_tensor_with_streams` apply them:

- Every tensor autograd saves is *packed*: it gets an id (the ids count every pack). It stays on the device, as a
  plain saved tensor, when it is smaller than `min_offload_size` (1024 bytes), is a parameter (or shares a
  parameter's storage), or shares the storage of a tensor packed earlier and still tracked (`storage_to_tensor_id`:
  a second save of the same tensor is never copied twice, and stays on the device until backward unpacks it).
- Otherwise it is copied into a pinned host tensor of its size (`torch.empty_like(..., pin_memory=True)`), and the
  device tensor is kept in `fwd_stash` until a later offloaded pack finds its id at least `max_fwd_stash_size` (5)
  behind (`id <= tensor_id - 5`): the device memory of the last packs stays alive, the rest is released once
  nothing else holds it.
- Backward: a tensor still in `fwd_stash` is used as it is; the others are copied back (`.to(device)`, a new tensor
  of their size) when their node runs, kept in `bwd_tensor_stash`, and deleted by the hook of the next node that
  brings tensors back (`prev_node_ids`): the tensors of two nodes are on the device at once. The first such hook
  empties `fwd_stash`.
- `lm_head` runs under a `NoOpManager` (its saves stay on the device); TRL's fused head never calls the module, so
  its saves are offloaded like the rest.
- Gradient checkpointing (non-reentrant): inside a checkpointed layer the checkpoint's own hooks win (nothing is
  packed by this one), but the layer input that `_NoopSaveInputs` saves goes through it: each layer's input is
  offloaded, the last 5 stay on the device; the recompute in backward saves into the checkpoint frame (no copy).

Host RAM: every offloaded tensor of a micro-batch is alive in pinned memory at the end of its forward
(`host_offload_bytes`). Not modelled: the contiguous copy made before offloading a non-contiguous view (a transient
of the view's size), the CUDA caching of the second stream's blocks (allocator.py prices one pool).
"""

from __future__ import annotations

from vramplan.estimator.tape import LayerCost, Node, Tape

MIN_OFFLOAD_BYTES = 1024  # OffloadActivations(min_offload_size=1024)
MAX_FWD_STASH = 5  # OffloadActivations(max_fwd_stash_size=5)


class OffloadTape(Tape):
    """A tape whose saved tensors go through `OffloadActivations`' pack and unpack rules (module docstring)."""

    def __init__(self, checkpointing: bool = False, events: list | None = None) -> None:
        super().__init__(checkpointing, events)
        self.host = 0  # pinned host bytes of the offloaded copies
        self.packs = 0
        self.stash: list[tuple[int, int]] = []  # (pack id, tensor) of `fwd_stash`
        self.tracked: set[int] = set()  # tensors whose storage key is tracked
        self.pinned: set[int] = set()  # tracked until backward (saved again while tracked)
        self.offloaded: dict[int, tuple[int, ...]] = {}  # id(node) -> its offloaded saves
        self._prev = 0  # bytes the previous bringing node brought back (freed after the next one runs)
        self._stash_cleared = False

    def op(self, nbytes: int, inputs: tuple[int, ...] = (), saves: tuple[int, ...] = (), **kw) -> int:
        """Autograd packs an op's saved inputs before the op runs (the generated `VariableType` code builds the
        node's `SavedVariable`s first) and its saved output after."""
        grad = kw.get("grad")
        needs = (any(self.grad[i] for i in inputs) or kw.get("param_grad", 0) > 0) if grad is None else grad
        moved = [] if self.checkpointing or not needs or kw.get("alias") is not None else \
            [t for t in saves if t is not None and self.pack(t)]
        before = len(self.nodes)
        out = super().op(nbytes, inputs, saves, **kw)
        if len(self.nodes) == before:
            return out
        node = self.nodes[-1]
        if kw.get("saves_out") and out in node.saved and self.pack(out):
            moved.append(out)
        kept = list(node.saved)
        for t in moved:  # the node holds the pack's id, not the tensor
            kept.remove(t)
            self.saved_by[t] -= 1
            self._maybe_free(t)
        if moved:
            node.saved = tuple(kept)
            self.offloaded[id(node)] = tuple(moved)
        return out

    def pack(self, t: int) -> bool:
        """`pack_tensor`: True when `t` is offloaded (its device memory then lives as long as the stash or the
        program holds it); False when it stays a plain saved tensor."""
        self.packs += 1
        if t in self.tracked:  # `storage_to_tensor_id` now points at this pack until backward unpacks it
            self.pinned.add(t)
            return False
        if self.size[t] < MIN_OFFLOAD_BYTES:
            return False  # kept on the device as a saved tensor (a second save stays tracked until backward)
        while self.stash and self.stash[0][0] <= self.packs - MAX_FWD_STASH:
            _, old = self.stash.pop(0)
            if old not in self.pinned:
                self.tracked.discard(old)
            self.drop(old)
        self.refs[t] += 1
        self.stash.append((self.packs, t))
        self.tracked.add(t)
        self.host += self.size[t]
        return True

    def flush_stash(self) -> int:
        """Let go of the stash's device tensors (what a later layer's packs evict); returns the bytes freed."""
        before = self.live
        for _, t in self.stash:
            self.drop(t)
        self.stash.clear()
        return before - self.live

    def _stash_bytes(self) -> int:
        return sum(self.size[t] for _, t in self.stash)

    # backward: `unpack_tensor_with_streams`
    def _unpack(self, node: Node) -> int:
        moved = self.offloaded.get(id(node), ())
        stashed = {t for _, t in self.stash}
        return sum(self.size[t] for t in moved if t not in stashed)

    def _after(self, node: Node | None) -> int:
        if node is not None and id(node) not in self.offloaded:
            return 0
        freed = self._prev
        self._prev = self._unpack(node) if node is not None else 0
        if not self._stash_cleared:  # the first hook deletes every `fwd_stash` entry
            self._stash_cleared = True
            for _, t in self.stash:
                self.refs[t] -= 1
                if self.refs[t] <= 0 and self.saved_by[t] <= 0 and t not in self.freed:
                    self.freed.add(t)
                    freed += self.size[t]
            self.stash.clear()
        return freed


def offloaded_layer_cost(traits, inter: int, c, a: int, grad_ckpt: bool, input_grad: bool, accumulate: bool):
    """`layer_costs._layer_cost` under activation offloading: one decoder layer in the steady state, as the second
    of two consecutive layers on one offloading tape (the first fills the stash the second's packs evict).

    - fwd_peak: above the live bytes at the layer's start, the previous layer's stash included (what `keep` does
      not count); keep: what stays on the device (small, duplicate-saved, program-held tensors), the stash not
      counted (later packs evict it); `stash`: the last packs' device tensors the head starts with.
    - Checkpointing: the layer input is the one pack (`_NoopSaveInputs`); the backward is the plain recompute.
    - Backward without checkpointing: a fresh tape whose stash is gone (the first hook of the step's backward
      clears it), each node's offloaded tensors brought back, the previous node's freed after it, and one node's
      worth carried in from the layer above (the hook that frees it runs after this layer's first node).
    Returns (LayerCost, host bytes per layer)."""
    from vramplan.estimator.layers import decoder_layer

    x_bytes = c.tokens * c.hidden * a

    def run(tp: Tape, ckpt: bool) -> tuple[int, int]:
        x = tp.new(x_bytes, input_grad)
        if ckpt:  # checkpoint(...) saves its input through the offloading hook
            tp.pack(x)
        y = decoder_layer(tp, c, traits, x, a, inter)
        cached = tp.release_cached()
        tp.drop(y)
        return y, cached

    fwd = OffloadTape(checkpointing=grad_ckpt)
    run(fwd, grad_ckpt)
    if grad_ckpt:  # one pack per layer: the stash always holds the last MAX_FWD_STASH layer inputs
        fwd.flush_stash()
    start, host0, stash_before = fwd.live, fwd.host, fwd._stash_bytes()
    fwd.peak = start
    _, cached = run(fwd, grad_ckpt)
    carried = (MAX_FWD_STASH - 1) * x_bytes if grad_ckpt else 0  # the previous layers' inputs
    # the decoder's `inputs_embeds` local (LlamaModel.forward) holds the embedding output until the layers are
    # done: its device memory outlives the offloaded copy (one x of the first layers is counted twice)
    fwd_peak = fwd.peak - (start - stash_before) - x_bytes + carried + x_bytes
    keep = (fwd.live - fwd._stash_bytes()) - (start - stash_before)
    # checkpointing: the stash holds the last layer inputs when the head starts, and the embedding output stays on
    # the device through the step once it went through the hook (observed in the trace of TRL's hooks on a PEFT
    # model, whose embedding output is a leaf: `enable_input_require_grads`; held inside autograd, no Python
    # referrer: the holder is not identified, and after backward it and its .grad stay: not in this moment)
    stash = (MAX_FWD_STASH + 1) * x_bytes if grad_ckpt else fwd._stash_bytes()
    host = fwd.host - host0

    bwd_abs, recompute_peak, grads = _offloaded_backward(traits, inter, c, a, grad_ckpt, input_grad, accumulate)
    return LayerCost(fwd_peak, keep, cached, bwd_abs, recompute_peak, grads, stash), host


def _offloaded_backward(traits, inter: int, c, a: int, grad_ckpt: bool, input_grad: bool, accumulate: bool
                        ) -> tuple[int, int, int]:
    """The backward half of `offloaded_layer_cost`: (backward peak from zero, recompute peak, param grads)."""
    from vramplan.estimator.layers import decoder_layer

    x_bytes = c.tokens * c.hidden * a
    bwd = (Tape if grad_ckpt else OffloadTape)()
    x = bwd.new(x_bytes, input_grad)
    if grad_ckpt:
        bwd.refs[x] += 1  # the recompute's input, brought back
    y = decoder_layer(bwd, c, traits, x, a, inter)
    recompute_peak = bwd.peak - x_bytes
    bwd.release_cached()
    if not grad_ckpt:  # the stash is gone; the layer above's last brought-back node is still held
        bwd.flush_stash()
        carry = max((sum(bwd.size[t] for t in moved) for moved in bwd.offloaded.values()), default=0)
        bwd.live += carry
        bwd._prev = carry
    held = bwd.live
    bwd_rel, grads = bwd.backward(y, accumulate)
    bwd_abs = held + bwd_rel
    if grad_ckpt:  # the recompute runs while the incoming gradient (x-sized) is already allocated
        bwd_abs = max(bwd_abs, x_bytes + recompute_peak + x_bytes)
    return bwd_abs, recompute_peak, grads


def host_offload_bytes(model, plan) -> int:
    """Pinned host RAM the offloaded copies of one micro-batch hold at the end of its forward (every layer's and
    the head's); 0 without `plan.activation_offloading`."""
    if not plan.activation_offloading:
        return 0
    from vramplan.architecture import traits_of
    from vramplan.estimator.context import embedding_output_requires_grad, layer_context, stream_bytes
    from vramplan.estimator.losses import loss_head
    from vramplan.estimator.trainers import step_plan

    p = step_plan(plan)
    c, a = layer_context(model, p), stream_bytes(p)
    args = (traits_of(model), model.intermediate_size, c, a, p.grad_ckpt)
    first = offloaded_layer_cost(*args, embedding_output_requires_grad(p), False)[1]
    rest = offloaded_layer_cost(*args, True, False)[1] if model.num_layers > 1 else 0
    head = OffloadTape()
    softcap = bool(model.config.get("final_logit_softcapping"))
    loss_head(head, c, head.new(c.tokens * c.hidden * a, True), a, softcap, c.trainer, c.loss_type)
    return first + (model.num_layers - 1) * rest + head.host


def offloading_note(model, plan) -> str | None:
    """What the estimate says about the host side of `--activation-offloading`."""
    if not plan.activation_offloading:
        return None
    return ("activation offloading: the host RAM is pinned memory for one micro-batch's saved activations (TRL's "
            "OffloadActivations copies every one of 1 KiB or more to the host)")
