"""The cross-field rules of a training plan: which combinations of engine, offload, trainer, 8-bit base and
evaluation are modelled, each refusal one line that says how to fix the input. `TrainingPlan`'s validators call
them (the record turns each ValueError into a one-line PlanError)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vramplan.plan import TrainingPlan

# Engines that shard the parameters themselves (and so can shard 4-bit weights stored in a float dtype).
PARAM_SHARDING = ("fsdp", "fsdp_grad_op", "zero3")
ZERO = ("zero1", "zero2", "zero3")  # DeepSpeed: ZeRO-Offload moves the optimizer to the host at any stage


def allowed_offloads(sharding: str) -> tuple[str, ...]:
    """The `offload` values an engine takes: optimizer states with DeepSpeed, parameters with FSDP and ZeRO-3."""
    return ("none", *(("optimizer",) if sharding in ZERO else ()), *(("params",) if sharding in PARAM_SHARDING else ()))


def check_trainer(plan: TrainingPlan) -> None:
    """The trainer, eval and TRL options: which combinations are modelled."""
    if plan.loss_type is not None and plan.trainer != "trl-sft":
        raise ValueError(f"--loss-type applies to --trainer trl-sft, not '{plan.trainer}'")
    if plan.multi_gpu and plan.eval_batch is not None:
        raise ValueError("--eval-batch is modelled on one GPU only for now (the engines do not price the eval "
                         "step yet): drop --gpus/--sharding or --eval-batch")
    if plan.packing and (plan.trainer != "trl-sft" or plan.multi_gpu or plan.eval_batch is not None):
        raise ValueError("--packing is modelled for --trainer trl-sft on one GPU without --eval-batch")
    if plan.trainer == "trl-orpo" and (plan.method == "qlora" or plan.eval_batch is not None):
        raise ValueError("--trainer trl-orpo is modelled for lora and full without --eval-batch (QLoRA: "
                         "ORPOTrainer's peft_module_casting_to_bf16 and its autocast region are not modelled)")
    if plan.activation_offloading and (plan.trainer not in ("trl-sft", "trl-dpo", "trl-kto") or plan.multi_gpu):
        raise ValueError("--activation-offloading is TRL's (activation_offloading=True): modelled for --trainer "
                         "trl-sft, trl-dpo or trl-kto on one GPU")
    if plan.precompute_ref_log_probs and plan.trainer not in ("trl-dpo", "trl-kto"):
        raise ValueError("--precompute-ref-log-probs applies to --trainer trl-dpo and trl-kto")
    if plan.trainer in ("trl-dpo", "trl-kto") and plan.eval_batch is not None:
        raise ValueError(f"--eval-batch is not modelled for --trainer {plan.trainer} yet")
    if plan.eval_batch is None and (plan.eval_accumulation_steps is not None or not plan.prediction_loss_only):
        raise ValueError("--eval-accumulation-steps and --no-prediction-loss-only need --eval-batch")
    if plan.eval_batch is not None and plan.eval_batch < 1 or (plan.eval_accumulation_steps or 1) < 1:
        raise ValueError("--eval-batch and --eval-accumulation-steps: must be positive integers")
    if not plan.prediction_loss_only and plan.eval_accumulation_steps is None:
        raise ValueError("--no-prediction-loss-only keeps every eval batch's logits on the GPU until evaluation "
                         "ends (Trainer evaluation_loop): give --eval-accumulation-steps N")


def check_8bit(plan: TrainingPlan) -> None:
    """LLM.int8 trains through adapters only (transformers `Trainer` refuses a purely quantized model;
    BitsAndBytesConfig refuses 4 and 8 bits together); what is not modelled with it is refused."""
    if not plan.load_in_8bit:
        return
    if plan.method != "lora":
        raise ValueError(f"--load-in-8bit is a LoRA base (method lora), not '{plan.method}'"
                         + (": QLoRA is the 4-bit base" if plan.method == "qlora" else ""))
    if plan.mixed_precision:
        raise ValueError("--load-in-8bit keeps int8 base weights; use --param-dtype bf16/fp16 instead of "
                         "mixed precision")
    if plan.parallelism != "none":
        raise ValueError("--load-in-8bit is modelled on one GPU only (bitsandbytes' Int8Params cannot be "
                         "sharded by FSDP/ZeRO-3; DDP is not modelled with it yet)")
    if plan.use_dora:
        raise ValueError("--dora over an 8-bit base (peft dequantizes Int8Params per forward) is not modelled "
                         "yet")


def check_parallel(plan: TrainingPlan) -> None:
    sharding = plan.parallelism
    if sharding == "none" and plan.gpus > 1:
        raise ValueError(f"--sharding none trains on one GPU; with --gpus {plan.gpus} choose ddp (replicas), "
                         "fsdp, fsdp_grad_op, zero1, zero2 or zero3")
    if plan.offload not in allowed_offloads(sharding):
        if plan.offload == "optimizer":
            hint = "use --offload params (FSDP offloads parameters, gradients and optimizer states together)" \
                if sharding.startswith("fsdp") else "use --sharding zero1, zero2 or zero3 (DeepSpeed ZeRO-Offload)"
            raise ValueError(f"--offload optimizer needs DeepSpeed ZeRO: {hint}")
        raise ValueError("--offload params needs --sharding fsdp, fsdp_grad_op or zero3 "
                         "(DeepSpeed offloads parameters only at stage 3)")
    if plan.method == "qlora" and sharding == "zero3" and plan.quant_storage == "uint8":
        raise ValueError("--sharding zero3 partitions 4-bit weights only when they are stored in the model's "
                         "float dtype: use --quant-storage bf16 (bnb_4bit_quant_storage)")
