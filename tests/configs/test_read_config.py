"""read_config: detection, malformed files as one line naming file and line, format names."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramplan.configs import FORMATS, ConfigReadError, read_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"


@pytest.mark.parametrize("name, fmt", [
    ("axolotl-llama31-8b-qlora.yml", "axolotl"), ("axolotl-qwen25-7b-lora-zero2.yml", "axolotl"),
    ("llamafactory-qwen25-7b-qlora.yaml", "llamafactory"), ("trl-sft-qwen25-1.5b.yaml", "trl"),
    ("hf-training-args.json", "hf"), ("adapter_config.json", "peft"), ("bnb_config.json", "bnb"),
    ("accelerate-fsdp2.yaml", "accelerate"), ("deepspeed-zero2.json", "deepspeed"),
    ("deepspeed-zero3-offload.json", "deepspeed"),
])
def test_every_example_is_detected_and_read(name, fmt):
    r = read_config(EXAMPLES / name)
    assert r.format == fmt and r.source.endswith(name)


def test_a_reading_is_json_and_reads_back():
    """`check --json`'s "reading" (`ConfigReading.to_dict`) reads back as the reading, for one file and a set."""
    import json

    from vramplan.configs import ConfigReading

    names = ("hf-training-args.json", "adapter_config.json", "bnb_config.json", "accelerate-fsdp2.yaml")
    for r in (read_config(EXAMPLES / "llamafactory-qwen25-7b-qlora.yaml"), read_config([EXAMPLES / n for n in names])):
        data = json.loads(json.dumps(r.to_dict()))
        assert ConfigReading.from_dict(data) == r and data["plan_options"] == r.plan_options
    assert ConfigReading(format="hf", source="x", model=None, plan_options={}, origin={}, ignored=[]).notes == []


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("base_model: x\nadapter: [lora\nlora_r: 8\n")
    with pytest.raises(ConfigReadError, match=r"bad\.yml:\d+: invalid YAML"):
        read_config(path)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2,}\n}')
    with pytest.raises(ConfigReadError, match=r"bad\.json:2: invalid JSON"):
        read_config(path)


def test_not_a_mapping_and_missing_file(tmp_path):
    (tmp_path / "list.yml").write_text("- a\n- b\n")
    with pytest.raises(ConfigReadError, match="expected a mapping"):
        read_config(tmp_path / "list.yml")
    with pytest.raises(ConfigReadError, match="cannot read"):
        read_config(tmp_path / "absent.yml")
    (tmp_path / "bin.yml").write_bytes(b"\xff\xfe\x00model")
    with pytest.raises(ConfigReadError, match="not a text file"):
        read_config(tmp_path / "bin.yml")
    (tmp_path / "tag.yml").write_text("base_model: !!python/object:os.system x\n")
    with pytest.raises(ConfigReadError, match=r"tag\.yml:1: invalid YAML"):
        read_config(tmp_path / "tag.yml")


def test_unknown_format_and_undetectable_file(tmp_path):
    (tmp_path / "x.yml").write_text("foo: 1\n")
    with pytest.raises(ConfigReadError, match="cannot tell the config format"):
        read_config(tmp_path / "x.yml")
    with pytest.raises(ConfigReadError, match="did you mean axolotl"):
        read_config(tmp_path / "x.yml", "axolotel")
    assert set(FORMATS) == {"axolotl", "llamafactory", "trl", "hf", "peft", "bnb", "accelerate", "deepspeed"}


def test_a_value_the_plan_refuses_names_the_config_field(tmp_path):
    (tmp_path / "a.yml").write_text("base_model: x\nmicro_batch_size: 0\n")
    with pytest.raises(ConfigReadError, match="micro_batch_size -> batch: "):
        read_config(tmp_path / "a.yml")


def test_the_package_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, vramplan.configs as c; c.read_config(sys.argv[1]); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "axolotl-llama31-8b-qlora.yml")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("text, needle", [
    ("base_model: x\nadapter: lora\nlora_alpha: abc\n", "lora_alpha: expected a number, got 'abc'"),
    ("base_model: x\nmicro_batch_size: two\n", "micro_batch_size: expected an integer, got 'two'"),
    ("base_model: x\ngradient_checkpointing: maybe\n", "gradient_checkpointing: expected true or false"),
    ("base_model: x\nbnb_config_kwargs: [1]\nadapter: qlora\nload_in_4bit: true\n",
     "bnb_config_kwargs: expected a mapping"),
    ("base_model: x\ndeepspeed: missing.json\n", "deepspeed: file missing.json not found"),
])
def test_bad_values_are_one_line_errors_naming_the_field(tmp_path, text, needle):
    (tmp_path / "a.yml").write_text(text)
    with pytest.raises(ConfigReadError, match=needle):
        read_config(tmp_path / "a.yml")


def test_bad_checkpointing_kwargs(tmp_path):
    (tmp_path / "a.json").write_text('{"output_dir": "o", "per_device_train_batch_size": 1, '
                                     '"gradient_checkpointing": true, "gradient_checkpointing_kwargs": "{nope"}')
    with pytest.raises(ConfigReadError, match="gradient_checkpointing_kwargs: expected a mapping"):
        read_config(tmp_path / "a.json")
