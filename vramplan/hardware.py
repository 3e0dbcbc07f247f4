"""GPU hardware profiles: one validated TOML file per GPU, loaded lazily and resolved by name.

Built-in profiles live in the repo's top-level `hardware_profiles/` folder, shipped in the wheel as the
package-data folder `vramplan.hardware_profiles`. User folders come from the `extra_dirs` argument (the CLI's
`--gpu-dir`) and from `VRAMPLAN_GPU_DIR` (an os.pathsep-separated list). Precedence, lowest first:
built-in < VRAMPLAN_GPU_DIR < extra_dirs; a file whose slug is already loaded replaces that profile.

Two figures in every profile follow rules kept here, in one place:

* `usable_bytes` is what one process can allocate: the total of `cudaMemGetInfo` (torch.cuda.mem_get_info,
  the "total capacity" in PyTorch's OOM message), i.e. the nominal capacity less the ECC carve-out (GDDR
  cards with in-band ECC on: 1/16) and the driver's reservation. Newer drivers (R525+) show that reservation
  on its own line, so nvidia-smi's "Total" can be larger than what torch sees. Where a public measurement
  exists the file cites it; otherwise it applies `derived_usable_bytes`.
* `cuda_context_bytes` follows `default_cuda_context_bytes`: the driver context plus the BLAS workspace a
  PyTorch process holds before its first tensor (see that function for sources).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from vramplan.errors import ConfigFileError, UnknownGpuError, did_you_mean
from vramplan.record import Record
from vramplan.units import MiB

ENV_VAR = "VRAMPLAN_GPU_DIR"
# Leading words people add to a GPU name that never tell two profiles apart.
_PREFIXES = frozenset({"nvidia", "geforce", "tesla", "amd", "radeon", "instinct"})


# Each number's lowest value: (field, bound, whether the bound itself is allowed). Sizes and rates are above 0;
# a bridge joins 2 cards.
_RANGES = tuple((name, 0, False) for name in (
    "memory_bytes", "usable_bytes", "bandwidth_bytes_per_s", "fp16_tflops_dense", "fp32_tflops", "tdp_watts",
    "host_link_bytes_per_s", "peer_link_bytes_per_s", "mamf_tflops")) + (
    ("cuda_context_bytes", 0, True), ("bf16_tflops_dense", 0, True), ("peer_link_max_gpus", 2, True))


class GpuProfile(Record):
    """One GPU as a PyTorch process sees it. Sizes in bytes, bandwidth in bytes/s, throughput in TFLOPS."""

    error = ConfigFileError
    exact_integers = True  # a byte count written as a float (2.5e10) is refused

    name: str
    slug: str
    aliases: tuple[str, ...] = ()
    vendor: Literal["nvidia", "amd"]
    architecture: str
    form: Literal["consumer", "workstation", "datacenter"]
    compute_capability: str | None = None
    memory_type: str
    memory_bytes: int
    usable_bytes: int
    bandwidth_bytes_per_s: int
    bf16_supported: bool
    fp8_supported: bool
    fp16_tflops_dense: float
    bf16_tflops_dense: float | None = None
    fp32_tflops: float
    cuda_context_bytes: int
    interconnect: str
    # Per direction, for the multi-GPU speed model: the link to the host (offload traffic), and between two GPUs
    # (collectives; the PCIe link when the cards have no NVLink/Infinity Fabric). None: PCIe 4.0 x16 is assumed.
    host_link_bytes_per_s: int | None = None
    peer_link_bytes_per_s: int | None = None
    peer_link_max_gpus: int | None = None  # a bridge joins 2 cards; None: no limit
    tdp_watts: int
    # Maximum achievable matmul TFLOPS (16-bit, dense) measured by a shape search, for the speed model
    # (vramplan.kernels); None: the vendor's typical fraction of the dense peak.
    mamf_tflops: float | None = None

    def _validate(self) -> None:
        """Physics: names given, sizes and rates above 0 and finite (inf TFLOPS is not a GPU), usable memory
        within memory, a compute capability exactly for NVIDIA, bf16 throughput exactly when bf16 is supported."""
        for name in ("name", "architecture", "memory_type", "interconnect"):
            if not getattr(self, name):
                raise ValueError(f"{name}: give a non-empty string")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", self.slug):
            raise ValueError(f"slug: '{self.slug}' must be lower-case letters, digits, '.' and '-'")
        for name, low, inclusive in _RANGES:
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and (v >= low if inclusive else v > low)):
                words = f"of {low} or more" if inclusive else f"above {low}"
                raise ValueError(f"{name}: {v} is out of range: give a finite number {words}")
        if self.usable_bytes > self.memory_bytes:
            raise ValueError(f"usable_bytes: {self.usable_bytes} exceeds memory_bytes ({self.memory_bytes})")
        cc = self.compute_capability
        if self.vendor == "nvidia" and (cc is None or not re.fullmatch(r"\d+\.\d+", cc)):
            raise ValueError("compute_capability: an NVIDIA GPU needs its compute capability as 'major.minor', "
                             "e.g. '8.9'")
        if self.vendor == "amd" and cc is not None:
            raise ValueError("compute_capability: AMD GPUs have no CUDA compute capability; leave it out")
        if self.bf16_supported and not self.bf16_tflops_dense:
            raise ValueError("bf16_tflops_dense: bf16_supported is true, so give the dense BF16 TFLOPS")
        if not self.bf16_supported and self.bf16_tflops_dense:
            raise ValueError("bf16_tflops_dense: bf16_supported is false, so leave this out (or 0)")

    @property
    def capability(self) -> tuple[int, int] | None:
        """NVIDIA's compute capability as (major, minor); None on AMD."""
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def runs_flash_attention_2(self) -> bool:
        """flash-attn 2 (Dao-AILab/flash-attention README): NVIDIA Ampere or newer (sm80+; Turing and older are
        refused at run time, 'FlashAttention only supports Ampere GPUs or newer'); on ROCm the composable-kernel
        backend runs MI200/MI300 (CDNA 2/3) and the Triton backend CDNA and RDNA, so every AMD profile here."""
        return self.vendor == "amd" or (self.capability or (0, 0)) >= (8, 0)


def default_dtypes(profile: GpuProfile, method: str) -> dict[str, str]:
    """The dtypes a run on this GPU uses when the user names none: bf16 where the GPU has it (no change), else
    what HF users run on such cards (`fp16=True`): LoRA/QLoRA on an fp16 base (peft keeps adapters fp32; the
    QLoRA compute dtype follows the base), full fine-tuning on fp32 master weights under fp16 autocast (fp16
    weights with `fp16=True` fail in the grad scaler: "Attempting to unscale FP16 gradients")."""
    if profile.bf16_supported:
        return {}
    return {"param_dtype": "fp32", "mixed_precision": "fp16"} if method == "full" else {"param_dtype": "fp16"}


def check_runs_on(plan: object, profile: GpuProfile) -> None:
    """Refuse a plan the GPU cannot run as asked (a `PlanError` line saying what to use instead).

    bf16 (weights, autocast or QLoRA compute dtype) needs bf16 units: NVIDIA sm80+ (`bf16_supported`). torch
    `cuda.is_bf16_supported()` says True on older cards too (`including_emulation`: a bf16 tensor can be made),
    but their tensor cores have no bf16 and every matmul is emulated: not the run a plan describes, and not the
    speed vramplan models. ROCm (`torch.version.hip`) reports bf16 on every AMD GPU; the profiles say which.
    flash_attention_2: see `GpuProfile.runs_flash_attention_2`.
    """
    from vramplan.errors import PlanError

    where = f"the {profile.slug} ({profile.architecture}" + (
        f", compute capability {profile.compute_capability})" if profile.compute_capability else ")")
    bf16 = [flag for flag, value in (("--param-dtype", plan.param_dtype), ("--mixed-precision",
            plan.mixed_precision), ("--compute-dtype", getattr(plan, "compute_dtype", None))) if value == "bf16"]
    if bf16 and not profile.bf16_supported:
        use = ("--param-dtype fp32 --mixed-precision fp16" if plan.method == "full" else "--param-dtype fp16")
        raise PlanError(f"{where} has no bf16 (it needs compute capability 8.0+, Ampere), and the plan computes in "
                        f"bf16 ({bf16[0]} bf16): use {use}, or name no dtype and get this GPU's default")
    if plan.attn == "flash_attention_2" and not profile.runs_flash_attention_2:
        raise PlanError(f"{where} cannot run flash_attention_2 (flash-attn 2 needs compute capability 8.0+, "
                        "Ampere): use --attn sdpa")


def derived_usable_bytes(memory_bytes: int, memory_type: str, vendor: str, ecc_carveout: bool = False) -> int:
    """Usable bytes for a card without a public measurement, rounded down to a MiB.

    AMD: nominal less KFD's 16 MiB (measured: MI250X GCD, MI300X, RX 7900 XTX). NVIDIA: GDDR cards with
    in-band ECC on lose 1/16 to it (HBM keeps ECC out of band); the driver reserve (1.5% HBM, 2.5% GDDR)
    is fitted to the measured profiles so that it under-estimates all of them but the T4.
    """
    if vendor == "amd":
        return memory_bytes - 16 * MiB
    visible = memory_bytes * 15 // 16 if ecc_carveout else memory_bytes
    reserve = 0.015 if memory_type.upper().startswith("HBM") else 0.025
    return int(visible * (1 - reserve)) // MiB * MiB


def default_cuda_context_bytes(vendor: str, compute_capability: str | None, architecture: str) -> int:
    """Memory a PyTorch process holds outside its tensors: driver context plus BLAS workspace.

    Context, with CUDA >= 11.7 lazy module loading (PyTorch's default since 1.13, pytorch/pytorch#86509,
    which measured ~274 MiB): ~300 MiB pre-Ampere, ~400 MiB Ampere/Ada (ptrblck in pytorch#107667 and
    #109888: "~300MB", "around 400MB"), 500 MiB Hopper/Blackwell (more SMs). It grows as training loads
    more kernels. Workspace, from ATen's CublasHandlePool.cpp: ':4096:2:16:8' (8 MiB + 128 KiB) before
    Hopper, 32 MiB for compute capability 9.x/10.x/12.x; on ROCm 32 MiB (128 MiB on gfx94x, CDNA 3) plus
    the 76 MiB hipBLASLt workspace. The AMD context (512 MiB) is an unmeasured estimate.
    """
    workspace = blas_workspace_bytes(vendor, compute_capability, architecture)
    if vendor == "amd":
        return 512 * MiB + workspace
    major = int((compute_capability or "0.0").split(".")[0])
    context = 300 if major < 8 else 400 if major == 8 else 500
    return context * MiB + workspace


def blas_workspace_bytes(vendor: str, compute_capability: str | None, architecture: str) -> int:
    """The BLAS workspace of one (handle, stream), from ATen's CublasHandlePool.cpp (see above); it is allocated
    through the caching allocator, so it is part of reserved memory (vramplan.device)."""
    if vendor == "amd":
        return (128 if architecture == "CDNA 3" else 32) * MiB + 76 * MiB
    major = int((compute_capability or "0.0").split(".")[0])
    return 32 * MiB if major >= 9 else 4096 * 1024 * 2 + 16 * 1024 * 8


def name_key(text: str) -> str:
    """Lowercase, drop separators and leading vendor words: 'NVIDIA GeForce RTX 4090' -> 'rtx4090'."""
    words = [w for w in re.split(r"[^a-z0-9.+]+", text.lower()) if w]
    while words and words[0] in _PREFIXES:
        words.pop(0)
    return "".join(words)


def _builtin_dir() -> Path:
    from vramplan.datafiles import builtin_gpu_dir

    return Path(builtin_gpu_dir())


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _parse(text: bytes, where: str, stem: str) -> GpuProfile:
    try:  # imported here: a plan without --gpu never parses a profile (tomllib is ~8 ms of a cold start)
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{where}: invalid TOML: {exc}") from None
    try:
        profile = GpuProfile.from_dict(data)
    except ConfigFileError as exc:
        raise ConfigFileError(f"{where}: {exc}") from None
    if profile.slug != stem:
        raise ConfigFileError(f"{where}: slug: '{profile.slug}' must equal the file name '{stem}'")
    return profile


def _user_dirs(extra_dirs: Sequence[str | os.PathLike[str]]) -> tuple[tuple[str, Path], ...]:
    env = [("VRAMPLAN_GPU_DIR", Path(p)) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    given = [("gpu-dir", Path(p)) for p in extra_dirs]
    return tuple((origin, p.expanduser().resolve()) for origin, p in env + given)


@functools.cache
def _load(user_dirs: tuple[tuple[str, Path], ...]) -> dict[str, tuple[GpuProfile, str]]:
    sources: list[tuple[str, Path]] = []
    builtin = _builtin_dir()
    sources += [(f"hardware_profiles/{f.name}", f) for f in sorted(builtin.iterdir(), key=lambda f: f.name)]
    for origin, folder in user_dirs:
        if not folder.is_dir():
            raise ConfigFileError(f"{origin}: {folder}: not a directory")
        sources += [(_display(f), f) for f in sorted(folder.iterdir())]
    profiles: dict[str, tuple[GpuProfile, str]] = {}
    for where, file in sources:
        if file.name.endswith(".toml") and file.is_file():
            profile = _parse(file.read_bytes(), where, file.name.removesuffix(".toml"))
            profiles.pop(profile.slug, None)  # a later folder overrides an earlier one (and is checked last)
            profiles[profile.slug] = (profile, where)
    _check_names(profiles)
    return profiles


def _check_names(profiles: dict[str, tuple[GpuProfile, str]]) -> None:
    """Every slug, name and alias must point at one profile, also after normalising."""
    owner: dict[str, str] = {}
    for slug, (profile, where) in profiles.items():
        labels = [(slug, "slug"), (profile.name, "name"), *((a, "aliases") for a in profile.aliases)]
        for label, field in labels:
            key = name_key(label)
            if not key:
                raise ConfigFileError(f"{where}: {field}: '{label}' is empty once vendor words are dropped")
            other = owner.setdefault(key, slug)
            if other != slug:
                raise ConfigFileError(
                    f"{where}: {field}: '{label}' is already used by {other} ({profiles[other][1]})"
                )


def load_profiles(extra_dirs: Sequence[str | os.PathLike[str]] = ()) -> dict[str, GpuProfile]:
    """All profiles by slug: built-in, then VRAMPLAN_GPU_DIR, then `extra_dirs` (later ones override)."""
    return {slug: profile for slug, (profile, _) in _load(_user_dirs(extra_dirs)).items()}


def clear_cache() -> None:
    """Forget loaded profiles (files edited since the first load are read again)."""
    _load.cache_clear()


def _index(profiles: dict[str, GpuProfile]) -> dict[str, str]:
    index: dict[str, str] = {}
    for slug, profile in profiles.items():
        for label in (slug, profile.name, *profile.aliases):
            index[name_key(label)] = slug
    return index


def resolve_gpu(name: str, extra_dirs: Sequence[str | os.PathLike[str]] = ()) -> GpuProfile:
    """The profile whose slug, display name or alias matches `name` after `name_key` normalisation."""
    profiles = load_profiles(extra_dirs)
    index = _index(profiles)
    key = name_key(name)
    if key in index:
        return profiles[index[key]]
    # An incomplete name ('a100', 'v100') lists its variants; anything else gets difflib's closest slugs.
    variants = sorted((k for k in index if key and k.startswith(key)), key=lambda k: (len(k), k))
    slugs = list(dict.fromkeys(index[k] for k in variants))[:3]
    hint = f" (did you mean {', '.join(slugs)}?)" if slugs else did_you_mean(key or name, sorted(profiles))
    raise UnknownGpuError(f"unknown GPU '{name}'{hint}; add a profile file with --gpu-dir or {ENV_VAR}")
