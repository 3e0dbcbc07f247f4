"""Package discovery for setuptools; the metadata lives in pyproject.toml.

pyproject.toml's `[tool.setuptools.packages.find]` cannot add a package from outside `vramplan/`, and the GPU profiles
live in the top-level `hardware_profiles/` folder (data, not code), shipped as `vramplan.hardware_profiles` (its
folder is mapped by `package-dir` in pyproject.toml). So discovery happens here: every folder under `vramplan/`, with
or without an `__init__.py` (a forgotten one must not drop modules from the wheel), plus that one.
"""

from setuptools import find_namespace_packages, setup

PACKAGES = find_namespace_packages(include=["vramplan", "vramplan.*"], exclude=["*.__pycache__"])

setup(packages=[*PACKAGES, "vramplan.hardware_profiles"])
