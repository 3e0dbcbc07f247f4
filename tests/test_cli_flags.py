"""The plan flags: Hugging Face spellings give the identical plan, names are checked against the libraries'
own tables (transformers OptimizerNames, peft LoraConfig defaults), no prefix matching, did-you-mean on every
unknown flag and value, exit codes 0 fits / 1 does not fit / 2 bad input, and a closed pipe."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan.cli import build_parser, main
from vramplan.commands.parsing import parse_argv as _parse
from vramplan.commands.plan_flags import finish_plan_args, plan_from_args
from vramplan.errors import InputError
from vramplan.hf_names import HF_NOT_MODELLED, HF_OPTIMIZERS, optimizer_from_hf
from vramplan.plan import make_plan

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"


def plan_of(*flags: str):
    args = _parse(build_parser(), ["estimate", "--model", "llama2-7b", *flags])
    finish_plan_args(args)
    return plan_from_args(args)


def exit_of(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("alias, flag", [
    (["--lora-r", "16"], ["--rank", "16"]),
    (["--r", "16"], ["--rank", "16"]),
    (["--lora-alpha", "32"], ["--alpha", "32"]),
    (["--target-modules", "q_proj", "v_proj"], ["--targets", "q_proj,v_proj"]),
    (["--target-modules", "all_linear"], ["--targets", "all-linear"]),
    (["--target_modules=all-linear"], ["--targets", "all-linear"]),
    (["--lora_dropout", "0.05"], ["--lora-dropout", "0.05"]),
    (["--per-device-train-batch-size", "4"], ["--batch", "4"]),
    (["--per_device_train_batch_size", "4"], ["--batch", "4"]),
    (["--gradient-accumulation-steps", "8"], ["--grad-accum", "8"]),
    (["--max-seq-length", "2048"], ["--seq", "2048"]),
    (["--max-length", "2048"], ["--seq", "2048"]),
    (["--gradient-checkpointing"], ["--grad-ckpt"]),
    (["--gradient-checkpointing", "false"], ["--no-grad-ckpt"]),
    (["--gradient_checkpointing", "False"], ["--no-grad-ckpt"]),
    (["--no-gradient-checkpointing"], ["--no-grad-ckpt"]),
    (["--attn-implementation", "flash_attention_2"], ["--attn", "flash_attention_2"]),
    (["--bnb-4bit-quant-type", "fp4"], ["--quant", "fp4"]),
    (["--bnb-4bit-use-double-quant", "false"], ["--no-double-quant"]),
    (["--bnb-4bit-use-double-quant"], ["--double-quant"]),
    (["--bnb-4bit-compute-dtype", "float16"], ["--compute-dtype", "fp16"]),
    (["--bnb-4bit-quant-storage", "bfloat16"], ["--quant-storage", "bf16"]),
    (["--bnb-4bit-quant-storage", "torch.uint8"], ["--quant-storage", "uint8"]),
    (["--param-dtype", "float32"], ["--param-dtype", "fp32"]),
    (["--torch-dtype", "bfloat16"], ["--param-dtype", "bf16"]),
    (["--dtype", "float16"], ["--param-dtype", "fp16"]),
    (["--fp16"], ["--param-dtype", "fp16"]),
    (["--bf16", "true"], ["--param-dtype", "bf16"]),
    (["--param-dtype", "fp32", "--bf16"], ["--param-dtype", "fp32", "--mixed-precision", "bf16"]),
    (["--param-dtype", "fp32", "--fp16"], ["--param-dtype", "fp32", "--mixed-precision", "fp16"]),
    (["--param-dtype", "fp32", "--mixed-precision", "bfloat16"],
     ["--param-dtype", "fp32", "--mixed-precision", "bf16"]),
    (["--optim", "adamw_torch"], ["--optimizer", "adamw"]),
    (["--optim", "adamw_torch_fused"], ["--optimizer", "adamw_fused"]),
    (["--optim", "adamw_bnb_8bit"], ["--optimizer", "adamw_8bit"]),
    (["--optim", "adamw_8bit"], ["--optimizer", "adamw_8bit"]),
    (["--optim", "paged_adamw_32bit"], ["--optimizer", "paged_adamw_32bit"]),
    (["--optim", "lion_8bit"], ["--optimizer", "lion_8bit"]),
    (["--optim", "adafactor"], ["--optimizer", "adafactor"]),
    (["--optim", "sgd"], ["--optimizer", "sgd"]),
])
def test_hf_alias_gives_the_identical_plan(alias, flag):
    method = ["--method", "qlora"] if any("bnb" in a for a in alias) else ["--method", "lora"]
    assert plan_of(*method, *alias) == plan_of(*method, *flag)


def _class_body(path: Path, name: str) -> list[ast.stmt]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return next(n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def test_every_transformers_optimizer_is_mapped_or_refused_by_name():
    """transformers' own `OptimizerNames` (read from its source, no torch import): each value is modelled or
    refused with its name in the message; nothing falls through to 'unknown'."""
    body = _class_body(_package_file("transformers", "training_args.py"), "OptimizerNames")
    names = [n.value.value for n in body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)]
    assert len(names) > 30
    for name in names:
        if name in HF_NOT_MODELLED:
            with pytest.raises(InputError, match=f"'{name}' is not modelled"):
                optimizer_from_hf(name)
        else:
            assert name in HF_OPTIMIZERS, name
            make_plan(method="full", optimizer=optimizer_from_hf(name))  # maps onto a plan optimizer
    assert set(HF_NOT_MODELLED) <= set(names)  # no stale refusals


def _lora_default(field: str) -> object:
    body = _class_body(_package_file("peft", "tuners/lora/config.py"), "LoraConfig")
    node = next(n for n in body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == field)
    default = next(k.value for k in node.value.keywords if k.arg == "default")  # type: ignore[union-attr]
    return ast.literal_eval(default)


def test_lora_defaults_are_peft_defaults():
    plan = plan_of("--method", "lora")
    assert plan.alpha == _lora_default("lora_alpha")
    assert plan.rank == _lora_default("r")
    assert plan_of("--method", "lora", "--rank", "64").alpha == _lora_default("lora_alpha")  # not 2 x rank


def _trl_default(field: str) -> object:
    body = _class_body(_package_file("trl", "trainer/model_config.py"), "ModelConfig")
    node = next(n for n in body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == field)
    return ast.literal_eval(next(k.value for k in node.value.keywords if k.arg == "default"))  # type: ignore[union-attr]


def test_trl_spellings_take_trl_defaults():
    """`trl sft --use_peft --load_in_4bit`: TRL's ModelConfig defaults reach LoraConfig / BitsAndBytesConfig."""
    plan = plan_of("--use_peft", "--load_in_4bit")
    assert plan.method == "qlora"
    assert (plan.rank, plan.alpha, plan.lora_dropout, plan.double_quant) == (
        _trl_default("lora_r"), _trl_default("lora_alpha"), _trl_default("lora_dropout"),
        _trl_default("use_bnb_nested_quant"))
    assert plan_of("--use-peft", "--lora-r", "4", "--lora-target-modules", "q_proj") == \
        plan_of("--method", "lora", "--rank", "4", "--targets", "q_proj", "--alpha", "32", "--lora-dropout", "0.05")
    assert plan_of("--use-peft", "false").method == "full"


@pytest.mark.parametrize("argv, needle", [
    (["estimate", "--model", "llama2-7b", "--method", "lora", "--lora", "0.05"], "--lora 0.05 (did you mean --lora-r"),
    (["estimate", "--model", "llama2-7b", "--grad", "2"], "unrecognized arguments: --grad 2"),
    (["estimate", "--model", "llama2-7b", "--seqq", "2"], "(did you mean --seq"),
    (["estimate", "--mod", "llama2-7b"], "(did you mean --model"),
    (["suggest", "--model", "llama2-7b", "--gpu", "rtx4090", "--objectiv", "speed"], "vramplan suggest: error"),
    (["compare", "--model", "llama2-7b", "--rnak", "8"], "unrecognized arguments: --rnak 8 (did you mean --rank"),
    (["estimat"], "invalid choice: 'estimat'"),
    (["estimate", "--model", "llama2-7b", "--sharding", "fsdpp"], "(did you mean fsdp"),
    (["estimate", "--model", "llama2-7b", "--attn-implementation", "spda"], "(did you mean sdpa"),
    (["estimate", "--model", "llama2-7b", "--attn-implementation", "flex_attention"],
     "'flex_attention' is not modelled"),
    (["estimate", "--model", "llama2-7b", "--optim", "paged_lion_8bit"], "'paged_lion_8bit' is not modelled"),
    (["estimate", "--model", "llama2-7b", "--optim", "adamw_torh"], "(did you mean adamw_torch"),
    (["estimate", "--model", "llama2-7b", "--bnb-4bit-compute-dtype", "bfloat61"], "(did you mean bfloat16"),
    (["estimate", "--model", "llama2-7b", "--gradient-checkpointing", "maybe"], "'maybe' is not a boolean"),
    (["estimate", "--model", "llama2-7b", "--bf16", "--fp16"], "--bf16 and --fp16"),
    (["estimate", "--model", "llama2-7b", "--param-dtype", "fp16", "--bf16"], "--bf16 over fp16 weights"),
    (["estimate", "--model", "llama2-7b", "--target-modules", "all_linear", "q_proj"], "all-linear"),
    (["estimate"], "--model is required"),
    (["estimate", "--model", "llama2-7b", "--load-in-4bit"], "--load-in-4bit without --use-peft"),
    (["estimate", "--model", "llama2-7b", "--use-peft", "--method", "full"], "--method says full"),
    (["estimate", "--model", "llama2-7b", "--config-format", "hf"], "--config-format applies to a --config file"),
])
def test_bad_flags_are_one_line_with_the_command_and_exit_2(capsys, argv, needle):
    code, _, err = exit_of(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert lines[0].startswith(f"vramplan {argv[0]}: error:" if argv[0] != "estimat" else "vramplan: error:")


def test_no_prefix_matching_anywhere():
    """Every parser refuses abbreviations: `--lora 0.05` must not set --lora-dropout."""
    parser = build_parser()
    parsers = [parser, *parser.parse_args(["models"]).subparsers.values()]
    assert all(p.allow_abbrev is False for p in parsers)


@pytest.mark.parametrize("argv, expected", [
    (["estimate", "--model", "llama2-7b", "--gpu", "a100-80gb"], 0),
    (["estimate", "--model", "llama2-7b", "--method", "full", "--gpu", "rtx4090"], 1),
    (["estimate", "--model", "llama2-7b", "--method", "full", "--gpu", "rtx4090", "--json"], 1),
    (["estimate", "--model", "llama2-7b", "--method", "full"], 0),  # no GPU: nothing judged
    (["compare", "--model", "llama2-7b", "--gpu", "rtx4090"], 0),  # QLoRA fits
    (["compare", "--model", "llama2-70b", "--gpu", "rtx4090", "--json"], 1),  # no method fits
    (["compare", "--model", "llama2-7b,llama2-70b", "--gpu", "rtx4090", "--json"], 1),  # one model fits nowhere
    (["estimate", "--model", "llama2-7b", "--rank", "0"], 2),
])
def test_exit_codes_follow_the_readme_rule(capsys, argv, expected):
    code, out, _ = exit_of(capsys, *argv)
    assert code == expected
    if "--json" in argv:
        json.loads(out)


@pytest.mark.parametrize("argv, expected", [
    (["estimate", "--model", "llama2-7b", "--method", "full", "--gpu", "rtx4090"], 1),
    (["estimate", "--model", "llama2-7b", "--gpu", "a100-80gb", "--json"], 0),
    (["gpus"], 0),
    pytest.param(["suggest", "--model", "llama-7b", "--gpu", "rtx4090"], 0, marks=pytest.mark.slow),
    pytest.param(["suggest", "--model", "llama2-70b", "--gpu", "rtx4090", "--json"], 1, marks=pytest.mark.slow),
])
def test_closed_pipe_keeps_the_verdict_and_prints_no_traceback(argv, expected):
    """`vramplan ... | head -1`: the reader is gone before vramplan writes; rich would exit 1 ("does not fit")."""
    proc = subprocess.Popen([sys.executable, "-m", "vramplan", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # type: ignore[union-attr]
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert proc.wait(timeout=120) == expected and "Traceback" not in err and "Exception" not in err, err


def test_config_gives_model_and_plan_and_flags_override(capsys):
    config = str(EXAMPLES / "axolotl-llama31-8b-qlora.yml")
    code, out, err = exit_of(capsys, "estimate", "--config", config, "--json")
    first = json.loads(out)
    assert code == 0 and first["model"] == "llama3.1-8b" and first["plan"]["rank"] == 16, err
    assert "ignored (no effect on memory)" in err
    code, out, _ = exit_of(capsys, "estimate", "--config", config, "--lora-r", "64", "--seq", "512", "--json")
    second = json.loads(out)["plan"]
    assert code == 0 and second["rank"] == 64 and second["seq"] == 512
    assert {k: v for k, v in second.items() if k not in ("rank", "seq")} == \
        {k: v for k, v in first["plan"].items() if k not in ("rank", "seq")}


def test_config_gpus_reach_suggest_unless_given():
    """suggest's own --gpus default (1) applies only after the config's num_processes."""
    config = str(EXAMPLES / "accelerate-fsdp2.yaml")
    parser = build_parser()
    args = _parse(parser, ["suggest", "--model", "llama2-7b", "--gpu", "rtx4090", "--config", config])
    finish_plan_args(args)
    assert args.gpus > 1
    args = _parse(parser, ["suggest", "--model", "llama2-7b", "--gpu", "rtx4090", "--config", config, "--gpus", "1"])
    finish_plan_args(args)
    assert args.gpus == 1
    args = _parse(parser, ["suggest", "--model", "llama2-7b", "--gpu", "rtx4090"])
    finish_plan_args(args)
    assert args.gpus == 1


def test_parser_imports_no_pydantic_and_no_rich():
    """`vramplan --help` builds every parser without building the pydantic plan model or importing rich."""
    code = ("import sys\nfrom vramplan.cli import build_parser\nbuild_parser().format_help()\n"
            "heavy = [m for m in ('pydantic', 'rich', 'torch') if m in sys.modules]\nassert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
