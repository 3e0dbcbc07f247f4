"""The package a user installs with `pip install .` holds the whole source tree and runs.

An editable install hid a wheel without `vramplan.estimator` (issue 10): `pip install .` then crashed at once. So
the wheel is built from a copy of the tree (no stale `build/`), compared file by file with the source, installed
non-editable in a temporary environment, and run from outside the repo.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The source trees that ship, and where their files land in the wheel (pyproject.toml's package-dir).
SHIPPED = {"vramplan": "vramplan", "hardware_profiles": "vramplan/hardware_profiles"}
# What the build needs besides the shipped trees.
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")


def _source_files() -> list[pathlib.Path]:
    """Files of the shipped trees, relative to the repo root: git's tracked and not-ignored files, else a walk."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *SHIPPED],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        files = [pathlib.Path(f) for f in listed if (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = [p.relative_to(ROOT) for top in SHIPPED for p in (ROOT / top).rglob("*") if p.is_file()]
    return sorted(f for f in files if "__pycache__" not in f.parts and f.suffix != ".pyc")


def _in_wheel(source: pathlib.Path) -> str:
    top, *rest = source.parts
    return "/".join([SHIPPED[top], *rest])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """`pip wheel . --no-deps`, on a copy of the tree: tracked and not-ignored files only."""
    src = tmp_path_factory.mktemp("src")
    for f in [*map(pathlib.Path, BUILD_FILES), *_source_files()]:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr
    (path,) = out.glob("vramplan-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {_in_wheel(f): f for f in _source_files()}
    missing = sorted(str(f) for name, f in expected.items() if name not in names)
    assert not missing, f"in the source tree but not in the wheel: {missing}"
    assert any(n.startswith("vramplan/estimator/") for n in names)
    assert sum(n.startswith("vramplan/hardware_profiles/") and n.endswith(".toml") for n in names) >= 30


@pytest.mark.slow
def test_non_editable_install_runs(wheel, tmp_path):
    """Installed from the wheel into a fresh venv (dependencies seen from this environment), run from elsewhere."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    target_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    # rich and pyyaml come from this environment's site-packages: appended to sys.path after the venv's own,
    # so the installed vramplan wins; a .pth path line loads no other .pth file (no editable finder).
    pathlib.Path(target_site, "outer_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300, check=False)
    assert install.returncode == 0, install.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import vramplan; print(vramplan.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where
    for argv in (["models"], ["gpus"], ["estimate", "--model", "llama-7b", "--method", "qlora", "--json"]):
        run = subprocess.run([str(bin_dir / "vramplan"), *argv], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120, check=False)
        assert run.returncode == 0, (argv, run.stderr)
        assert run.stdout.strip()
