"""accelerate config YAML and DeepSpeed JSON: one test per mapped field (accelerate `FullyShardedDataParallelPlugin`
and `DeepSpeedPlugin` field names; DeepSpeed's `zero_optimization` schema)."""

from __future__ import annotations

import pytest

from vramplan.configs import ConfigReadError

ACC = "compute_environment: LOCAL_MACHINE\n"


@pytest.mark.parametrize("text, expected", [
    ("distributed_type: MULTI_GPU\nnum_processes: 2\n", {"gpus": 2, "sharding": "ddp"}),
    ("distributed_type: NO\nnum_processes: 1\n", {"gpus": 1}),
    ("distributed_type: FSDP\nnum_processes: 8\nfsdp_config: {fsdp_version: 2, fsdp_reshard_after_forward: true}\n",
     {"gpus": 8, "sharding": "fsdp"}),
    ("distributed_type: FSDP\nfsdp_config: {fsdp_version: 2, fsdp_reshard_after_forward: false}\n",
     {"sharding": "fsdp_grad_op"}),
    ("distributed_type: FSDP\nfsdp_config: {fsdp_sharding_strategy: SHARD_GRAD_OP}\n", {"sharding": "fsdp_grad_op"}),
    ("distributed_type: FSDP\nfsdp_config: {fsdp_reshard_after_forward: FULL_SHARD}\n", {"sharding": "fsdp"}),
    ("distributed_type: FSDP\nfsdp_config: {fsdp_version: 2, fsdp_offload_params: true}\n",
     {"sharding": "fsdp", "offload": "params"}),
    ("distributed_type: FSDP\nfsdp_config: {fsdp_version: 2, fsdp_activation_checkpointing: true}\n",
     {"sharding": "fsdp", "grad_ckpt": True, "ckpt_reentrant": False}),
    ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 2, offload_optimizer_device: cpu}\n",
     {"sharding": "zero2", "offload": "optimizer"}),
    (("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 3, offload_param_device: cpu,"
     " offload_optimizer_device: cpu}\n"), {"sharding": "zero3", "offload": "params"}),
])
def test_accelerate_mapped_fields(read, text, expected):
    r = read(ACC + text)
    assert r.format == "accelerate" and r.plan_options == expected


def test_accelerate_follows_deepspeed_config_file(read, tmp_path):
    (tmp_path / "z3.json").write_text('{"zero_optimization": {"stage": 3}}')
    r = read(ACC + "distributed_type: DEEPSPEED\ndeepspeed_config: {deepspeed_config_file: z3.json}\n")
    assert r.plan_options["sharding"] == "zero3" and r.files[-1].endswith("z3.json")


@pytest.mark.parametrize("text, field", [
    ("distributed_type: FSDP\nfsdp_config: {fsdp_sharding_strategy: HYBRID_SHARD}\n", "fsdp_sharding_strategy"),
    ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 0}\n", "zero_stage"),
    ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 3, offload_param_device: nvme}\n",
     "offload_param_device"),
    ("distributed_type: XLA\n", "distributed_type"),
])
def test_accelerate_unmodelled(read, text, field):
    with pytest.raises(ConfigReadError, match=field):
        read(ACC + text)


@pytest.mark.parametrize("text, expected", [
    ('{"zero_optimization": {"stage": 1}}', {"sharding": "zero1"}),
    ('{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}',
     {"sharding": "zero2", "offload": "optimizer"}),
    ('{"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}',
     {"sharding": "zero3", "offload": "params"}),
    ('{"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}',
     {"sharding": "zero2", "batch": 4, "grad_accum": 2}),
    ('{"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}', {"sharding": "zero2"}),
])
def test_deepspeed_mapped_fields(read, text, expected):
    r = read(text, "ds.json")
    assert r.format == "deepspeed" and r.plan_options == expected


@pytest.mark.parametrize("text, field", [
    ('{"zero_optimization": {"stage": 0}}', "stage"),
    ('{"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}', "offload_param.device"),
    ('{"zero_optimization": {"stage": 2, "allgather_bucket_size": 2e8}}', "allgather_bucket_size"),
    ('{"zero_optimization": {"stage": 3, "stage3_max_live_parameters": 1e8}}', "stage3_max_live_parameters"),
])
def test_deepspeed_unmodelled(read, text, field):
    with pytest.raises(ConfigReadError, match=field):
        read(text, "ds.json")


def test_zero_offload_needs_more_than_one_field_to_be_consistent(read):
    """ZeRO-2 with offload_param is a plan error, named with its config field."""
    with pytest.raises(ConfigReadError, match="offload_param.*--offload params needs"):
        read('{"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}', "ds.json")


@pytest.mark.slow
def test_accelerate_example_as_accelerate_reads_it():
    """accelerate's own ClusterConfig.from_yaml_file on the example, and the FSDP2 plugin it would build."""
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    from vramplan.configs import read_config

    path = Path(__file__).resolve().parents[2] / "examples" / "configs" / "accelerate-fsdp2.yaml"
    real = ClusterConfig.from_yaml_file(str(path))
    opts = read_config(path).plan_options
    assert opts["gpus"] == real.num_processes and real.distributed_type.value == "FSDP"
    assert real.fsdp_config["fsdp_version"] == 2 and real.fsdp_config["fsdp_reshard_after_forward"] is True
    assert opts["sharding"] == "fsdp" and "offload" not in opts and not real.fsdp_config["fsdp_offload_params"]
