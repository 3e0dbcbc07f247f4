"""Package discovery for setuptools; the metadata lives in pyproject.toml.

pyproject.toml's `[tool.setuptools.packages.find]` cannot add a package from outside `vramplan/`, and the GPU profiles
live in the top-level `hardware_profiles/` folder (data, not code), shipped as `vramplan.hardware_profiles` (its
folder is mapped by `package-dir` in pyproject.toml). So discovery happens here: every `vramplan*` package found under
`vramplan/`, plus that one.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["vramplan", "vramplan.*"]), "vramplan.hardware_profiles"])
