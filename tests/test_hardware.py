"""Hardware profiles: the built-in files, name resolution, user folders and one-line errors for broken files.

Golden numbers name their source (vendor datasheet or a public measurement, cited again in each TOML file).
Offline, no GPU, no torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from vramplan import hardware
from vramplan.errors import ConfigFileError, UnknownGpuError
from vramplan.hardware import (
    ENV_VAR,
    GpuProfile,
    default_cuda_context_bytes,
    derived_usable_bytes,
    load_profiles,
    name_key,
    resolve_gpu,
)
from vramplan.units import GiB, MiB

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "hardware_profiles"
# Profiles without a public usable-memory measurement: usable_bytes comes from derived_usable_bytes
# (value: whether in-band ECC is on by default and carves out 1/16 of the GDDR).
DERIVED_USABLE = {
    "p100": False, "a40": True, "l4": True, "h100-nvl": False, "h200": False, "gh200": False,
    "rtx-a6000": False, "rtx-pro-6000": False, "rtx3090ti": False, "rtx4060ti-16gb": False,
    "rtx4070ti-super": False, "rtx4080": False, "rtx4080-super": False, "rtx5080": False, "mi325x": False,
}


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    hardware.clear_cache()
    yield
    hardware.clear_cache()


def to_toml(data: dict) -> str:
    """Enough of a TOML writer for a flat profile (strings, numbers, booleans, string lists)."""
    lines = []
    for key, value in data.items():
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(json.dumps(v) for v in value) + "]"
        elif isinstance(value, str):
            text = json.dumps(value)
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def profile_data(slug: str = "my-gpu", **changes) -> dict:
    """A valid profile (the built-in RTX 4090's numbers) under a new slug and name."""
    data = resolve_gpu("rtx4090").to_dict()
    data.update(slug=slug, name=f"Test GPU {slug}", aliases=[f"test {slug}"])
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def write(folder: Path, stem: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- built-ins
def test_builtin_profiles_load_one_per_file():
    profiles = load_profiles()
    assert len(profiles) >= 30
    assert set(profiles) == {p.stem for p in BUILTIN_DIR.glob("*.toml")}
    assert all(isinstance(p, GpuProfile) and p.slug == slug for slug, p in profiles.items())


@pytest.mark.parametrize(
    "slug",
    ["t4", "v100-16gb", "v100-32gb", "a10g", "a10", "l4", "l40s", "rtx3060-12gb", "rtx3080-10gb", "rtx3090",
     "rtx3090ti", "rtx4060ti-16gb", "rtx4070ti-super", "rtx4080", "rtx4090", "rtx5090", "rtx-a6000",
     "rtx6000-ada", "a100-40gb", "a100-80gb", "h100-pcie", "h100-sxm", "h200", "b200", "mi250x", "mi300x"],
)
def test_required_gpus_are_present(slug: str):
    assert slug in load_profiles()


def test_every_slug_name_and_alias_resolves_to_its_profile():
    for slug, profile in load_profiles().items():
        for label in (slug, profile.name, *profile.aliases):
            for variant in (label, label.upper(), label.lower().replace(" ", "_"), f"NVIDIA {label}"):
                assert resolve_gpu(variant).slug == slug, variant


@pytest.mark.parametrize(
    "typed", ["RTX 4090", "rtx_4090", "rtx-4090", "NVIDIA GeForce RTX 4090", "4090", "geforce rtx 4090"]
)
def test_what_people_type_for_a_4090(typed: str):
    assert resolve_gpu(typed).slug == "rtx4090"


def test_device_names_torch_reports_resolve():
    """torch.cuda.get_device_name() strings, so a measured run can find its own profile."""
    expected = {
        "Tesla T4": "t4", "Tesla V100-SXM2-32GB": "v100-32gb", "NVIDIA A100-SXM4-80GB": "a100-80gb",
        "NVIDIA A100-SXM4-40GB": "a100-40gb", "NVIDIA H100 80GB HBM3": "h100-sxm", "NVIDIA A10G": "a10g",
        "NVIDIA L4": "l4", "NVIDIA RTX 6000 Ada Generation": "rtx6000-ada", "AMD Instinct MI300X": "mi300x",
    }
    assert {name: resolve_gpu(name).slug for name in expected} == expected


def test_no_two_profiles_share_a_name_after_normalising():
    owner: dict[str, str] = {}
    for slug, profile in load_profiles().items():
        for label in {name_key(x) for x in (slug, profile.name, *profile.aliases)}:
            assert owner.setdefault(label, slug) == slug, f"{label!r}: {owner[label]} and {slug}"


# ------------------------------------------------------------------------------------------- spot checks
def test_rtx4090_numbers():
    gpu = resolve_gpu("rtx4090")
    assert gpu.memory_bytes == 24 * GiB  # 24 GB GDDR6X is 24 GiB
    assert gpu.usable_bytes == 24207 * MiB  # torch OOM "23.64 GiB total capacity" (ali-vilab/VGen#104)
    assert gpu.usable_bytes < 24564 * MiB  # nvidia-smi's Total, which includes the driver reserve
    assert gpu.bandwidth_bytes_per_s == 1008 * 10**9  # 384-bit x 21 Gbps
    assert gpu.fp32_tflops == pytest.approx(82.6)
    assert gpu.bf16_tflops_dense == pytest.approx(165.2)  # FP32 accumulate: half the 330.3 FP16-acc rate
    assert (gpu.compute_capability, gpu.fp8_supported, gpu.form) == ("8.9", True, "consumer")


def test_h100_sxm_numbers():
    gpu = resolve_gpu("h100-sxm")
    assert gpu.memory_bytes == 80 * GiB
    assert gpu.usable_bytes == 81008 * MiB  # "79.11 GiB" (vllm-project/vllm#27508); nvidia-smi 81559 MiB
    assert gpu.bandwidth_bytes_per_s == 3_350 * 10**9  # 3.35 TB/s, datasheet
    assert gpu.bf16_tflops_dense == pytest.approx(989, rel=0.01)  # 1,979 with sparsity
    assert gpu.compute_capability == "9.0" and gpu.fp8_supported and "NVLink" in gpu.interconnect
    assert gpu.tdp_watts == 700


def test_a100_80gb_is_the_sxm4_part():
    sxm, pcie = resolve_gpu("a100-80gb"), resolve_gpu("a100-80gb-pcie")
    assert "SXM4" in sxm.name and sxm.bandwidth_bytes_per_s == 2_039 * 10**9
    assert pcie.bandwidth_bytes_per_s == 1_935 * 10**9 and pcie.tdp_watts == 300
    assert sxm.memory_bytes == pcie.memory_bytes == 80 * GiB
    assert sxm.usable_bytes == 81050 * MiB  # torch total 81050 MiB (meta-pytorch/torchrec#3580)
    assert sxm.bf16_tflops_dense == pytest.approx(312)


def test_pre_ampere_cards_have_no_bf16():
    for slug in ("t4", "v100-16gb", "v100-32gb", "p100"):
        gpu = resolve_gpu(slug)
        assert not gpu.bf16_supported and gpu.bf16_tflops_dense is None and not gpu.fp8_supported
    assert resolve_gpu("t4").fp16_tflops_dense == pytest.approx(65)


def test_amd_figures():
    mi300x = resolve_gpu("AMD Instinct MI300X")
    assert mi300x.compute_capability is None
    assert mi300x.usable_bytes == 206_141_652_992  # rocm-smi VRAM Total (ROCm/legacy-rocm-build#4750)
    assert mi300x.bf16_tflops_dense == pytest.approx(1307.4)
    assert resolve_gpu("mi250x").memory_bytes == 64 * GiB  # one GCD: what one torch device sees


def test_capabilities_follow_the_architecture():
    for gpu in load_profiles().values():
        if gpu.vendor == "nvidia":
            cc = tuple(int(x) for x in gpu.compute_capability.split("."))
            assert gpu.bf16_supported == (cc >= (8, 0)), gpu.slug
            assert gpu.fp8_supported == (cc >= (8, 9)), gpu.slug


def test_usable_memory_is_plausible():
    for gpu in load_profiles().values():
        assert 0.9 * gpu.memory_bytes <= gpu.usable_bytes < gpu.memory_bytes, gpu.slug
        assert gpu.usable_bytes % MiB == 0 or gpu.vendor == "amd", gpu.slug


@pytest.mark.parametrize("slug", sorted(DERIVED_USABLE))
def test_derived_usable_follows_the_rule(slug: str):
    gpu = resolve_gpu(slug)
    expected = derived_usable_bytes(gpu.memory_bytes, gpu.memory_type, gpu.vendor, DERIVED_USABLE[slug])
    assert gpu.usable_bytes == expected


def test_derived_rule_underestimates_the_measured_cards():
    """The rule is fitted to these public measurements (all but the T4 come out lower)."""
    measured = {
        "rtx4090": (24, False), "rtx3090": (24, False), "rtx5090": (32, False), "rtx3060-12gb": (12, False),
        "a100-80gb": (80, False), "h100-sxm": (80, False), "l40s": (48, True), "a10": (24, True),
    }
    for slug, (gib, ecc) in measured.items():
        gpu = resolve_gpu(slug)
        assert derived_usable_bytes(gib * GiB, gpu.memory_type, "nvidia", ecc) <= gpu.usable_bytes, slug


def test_cuda_context_follows_the_documented_rule():
    for gpu in load_profiles().values():
        rule = default_cuda_context_bytes(gpu.vendor, gpu.compute_capability, gpu.architecture)
        assert gpu.cuda_context_bytes == rule, gpu.slug
        assert 300 * MiB <= gpu.cuda_context_bytes <= 800 * MiB
    # PyTorch's cuBLAS workspace: 8 MiB + 128 KiB before Hopper, 32 MiB on 9.x/10.x/12.x (CublasHandlePool.cpp)
    assert default_cuda_context_bytes("nvidia", "8.9", "Ada Lovelace") == 400 * MiB + 8 * MiB + 128 * 1024
    assert default_cuda_context_bytes("nvidia", "12.0", "Blackwell") == 500 * MiB + 32 * MiB


def test_profiles_are_frozen():
    with pytest.raises(FrozenInstanceError):
        resolve_gpu("t4").memory_bytes = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ user folders
def test_user_folder_by_argument(tmp_path: Path):
    write(tmp_path, "my-gpu", to_toml(profile_data("my-gpu", memory_bytes=48 * GiB, usable_bytes=47 * GiB)))
    gpu = resolve_gpu("Test GPU my-gpu", extra_dirs=[tmp_path])
    assert gpu.slug == "my-gpu" and gpu.memory_bytes == 48 * GiB
    assert "my-gpu" in load_profiles([str(tmp_path)])  # str paths work too
    assert "my-gpu" not in load_profiles()


def test_user_folders_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path / "a", "gpu-a", to_toml(profile_data("gpu-a")))
    write(tmp_path / "b", "gpu-b", to_toml(profile_data("gpu-b")))
    monkeypatch.setenv(ENV_VAR, f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}{os.pathsep}")
    profiles = load_profiles()
    assert {"gpu-a", "gpu-b"} <= set(profiles) and len(profiles) == len(list(BUILTIN_DIR.glob("*.toml"))) + 2
    assert resolve_gpu("test gpu-b").slug == "gpu-b"


def test_user_file_overrides_a_builtin_slug(tmp_path: Path):
    modded = profile_data("rtx4090", name="RTX 4090 48GB (modded)", aliases=["4090"],
                          memory_bytes=48 * GiB, usable_bytes=47 * GiB)
    write(tmp_path, "rtx4090", to_toml(modded))
    assert resolve_gpu("RTX 4090", extra_dirs=[tmp_path]).memory_bytes == 48 * GiB
    assert resolve_gpu("RTX 4090").memory_bytes == 24 * GiB  # the built-in is untouched


def test_argument_folder_beats_environment_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path / "env", "my-gpu", to_toml(profile_data("my-gpu", tdp_watts=100)))
    write(tmp_path / "arg", "my-gpu", to_toml(profile_data("my-gpu", tdp_watts=200)))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert resolve_gpu("my-gpu").tdp_watts == 100
    assert resolve_gpu("my-gpu", extra_dirs=[tmp_path / "arg"]).tdp_watts == 200


def test_missing_user_folder(tmp_path: Path):
    with pytest.raises(ConfigFileError, match="not a directory"):
        load_profiles([tmp_path / "nope"])


# ----------------------------------------------------------------------------------------- broken files
def _without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


BROKEN = {
    "toml-syntax": ("broken", "name = 'x'\nmemory_bytes = = 3\n", "invalid TOML"),
    "missing-field": ("broken", to_toml(_without(profile_data("broken"), "memory_bytes")), "memory_bytes"),
    "wrong-type": ("broken", to_toml(profile_data("broken", memory_bytes="24 GiB")), "memory_bytes"),
    "float-bytes": ("broken", to_toml(profile_data("broken", usable_bytes=2.5e10)), "usable_bytes"),
    "bad-alias-type": ("broken", to_toml(profile_data("broken")).replace('["test broken"]', "[4090]"),
                       "aliases"),
    "unknown-field": ("broken", to_toml(profile_data("broken", memory_gb=24)), "memory_gb"),
    "bad-vendor": ("broken", to_toml(profile_data("broken", vendor="intel")), "vendor"),
    "slug-not-stem": ("broken", to_toml(profile_data("other-name")), "slug"),
    "usable-over-memory": ("broken", to_toml(profile_data("broken", usable_bytes=25 * GiB)), "usable_bytes"),
    "nvidia-without-cc": ("broken", to_toml(_without(profile_data("broken"), "compute_capability")),
                          "compute_capability"),
    "bf16-without-rate": ("broken", to_toml(_without(profile_data("broken"), "bf16_tflops_dense")),
                          "bf16_tflops_dense"),
    "alias-of-builtin": ("broken", to_toml(profile_data("broken", aliases=["RTX-4090"])), "aliases"),
    "override-steals-alias": ("a10", to_toml(profile_data("a10", aliases=["4090"])), "aliases"),
    "vendor-word-alias": ("broken", to_toml(profile_data("broken", aliases=["NVIDIA GeForce"])), "aliases"),
    "zero-link-rate": ("broken", to_toml(profile_data("broken", peer_link_bytes_per_s=0)), "peer_link_bytes_per_s"),
    "one-gpu-link": ("broken", to_toml(profile_data("broken", peer_link_max_gpus=1)), "peer_link_max_gpus"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_gives_one_line_naming_file_and_field(tmp_path: Path, case: str):
    stem, text, field = BROKEN[case]
    write(tmp_path, stem, text)
    with pytest.raises(ConfigFileError) as info:
        load_profiles([tmp_path])
    message = str(info.value)
    where, rest = message.split(": ", 1)
    assert "\n" not in message
    assert Path(where).resolve() == (tmp_path / f"{stem}.toml").resolve() and field in rest, message


def test_broken_message_format(tmp_path: Path):
    write(tmp_path, "broken", to_toml(_without(profile_data("broken"), "memory_bytes")))
    with pytest.raises(ConfigFileError) as info:
        load_profiles([tmp_path])
    where, rest = str(info.value).split(": ", 1)
    assert Path(where).name == "broken.toml" and rest == "memory_bytes: required"


def test_duplicate_alias_across_two_user_files(tmp_path: Path):
    write(tmp_path, "gpu-a", to_toml(profile_data("gpu-a", aliases=["shared name"])))
    write(tmp_path, "gpu-b", to_toml(profile_data("gpu-b", aliases=["Shared-Name"])))
    with pytest.raises(ConfigFileError) as info:
        load_profiles([tmp_path])
    message = str(info.value)
    assert "gpu-b.toml: aliases: 'Shared-Name' is already used by gpu-a" in message and "\n" not in message


# -------------------------------------------------------------------------------------------- unknown GPU
def test_unknown_gpu_suggests_the_closest_slug():
    with pytest.raises(UnknownGpuError) as info:
        resolve_gpu("rtx4909")
    message = str(info.value)
    assert "did you mean rtx4090" in message and "\n" not in message


def test_incomplete_name_lists_its_variants():
    with pytest.raises(UnknownGpuError, match=r"did you mean .*a100-40gb") as info:
        resolve_gpu("A100")
    assert "a100-80gb" in str(info.value)


# --------------------------------------------------------------------------------------------- start-up
def test_import_is_torch_free_and_lazy():
    code = (
        "import sys, vramplan.hardware as h; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert h._load.cache_info().currsize == 0, 'profiles loaded at import'; "
        "assert len(h.load_profiles()) >= 30"
    )
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=BUILTIN_DIR.parent, env=env)


def test_profiles_are_cached():
    load_profiles()
    before = hardware._load.cache_info().hits
    resolve_gpu("4090")
    assert hardware._load.cache_info().hits == before + 1
