"""``pip install .`` gives a working package: sub-packages, dependencies that match the pins.

requirements*.txt are the pinned, tested set; pyproject.toml's [project] dependencies and extras
are what ``pip install .`` / ``pip install "byol_jax[preflight,dev] @ git+..."`` resolve. They
must name the same distributions, every pin must satisfy its range, and every third-party module
the package imports at load time must come from a declared dependency.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    PYPROJECT = tomllib.load(_f)
PROJECT = PYPROJECT["project"]
# requirements file -> the pyproject list it must agree with.
GROUPS = {
    "requirements.txt": PROJECT["dependencies"],
    "requirements-preflight.txt": PROJECT["optional-dependencies"]["preflight"],
    "requirements-dev.txt": PROJECT["optional-dependencies"]["dev"],
}
# Import name -> distribution, where they differ.
DISTRIBUTION_OF = {
    "absl": "absl-py",
    "orbax": "orbax-checkpoint",
    "tensorflow": "tensorflow-cpu",
    "tensorflow_datasets": "tensorflow-datasets",
}


def _pins(name: str) -> dict[str, str]:
    """{distribution: specifier} of one requirements file (``-r`` includes are skipped)."""
    pins = {}
    with open(os.path.join(ROOT, name)) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                requirement = Requirement(line)
                pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    return pins


def _ranges(entries: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(e).name): Requirement(e) for e in entries}


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_requirements_and_pyproject_name_the_same_distributions(name):
    assert sorted(_pins(name)) == sorted(_ranges(GROUPS[name]))


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_every_pin_lies_inside_its_pyproject_range(name):
    ranges = _ranges(GROUPS[name])
    for dist, pin in _pins(name).items():
        match = re.fullmatch(r"==([\w.]+?)(\.\*)?", pin)
        assert match, f"{name}: {dist}{pin} is not a pin (==version)"
        if match.group(2):  # a wildcard pin: pyproject must say the same
            assert str(ranges[dist].specifier) == pin, dist
        else:
            assert ranges[dist].specifier.contains(match.group(1), prereleases=True), (
                f"{name} pins {dist}{pin}, outside pyproject's {ranges[dist].specifier}"
            )


def test_every_subpackage_is_installed():
    # setuptools' packages.find: every folder with __init__.py whose dotted name fnmatches an
    # include pattern (and no exclude pattern).
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    on_disk = {
        os.path.relpath(folder, ROOT).replace(os.sep, ".")
        for folder, _, files in os.walk(os.path.join(ROOT, "byol_jax"))
        if "__init__.py" in files
    }
    installed = {
        name
        for name in on_disk
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in find["include"])
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in find.get("exclude", ()))
    }
    assert "byol_jax.evaluators" in on_disk
    assert installed == on_disk
    packages = PYPROJECT["tool"]["setuptools"]["packages"]
    assert isinstance(packages, dict), "a fixed package list misses new sub-packages"


def _top_level_imports() -> set[str]:
    names = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "byol_jax")):
        for file in files:
            if file.endswith(".py"):
                with open(os.path.join(folder, file)) as f:
                    tree = ast.parse(f.read())
                for node in tree.body:  # load-time imports; optional ones sit in functions
                    if isinstance(node, ast.Import):
                        names.update(alias.name.split(".")[0] for alias in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_is_a_declared_dependency():
    import sys

    declared = set(_ranges(PROJECT["dependencies"]))
    third_party = {
        name
        for name in _top_level_imports()
        if name not in sys.stdlib_module_names and name not in ("byol_jax", "__future__")
    }
    assert third_party, "no imports found"
    missing = {
        name
        for name in third_party
        if canonicalize_name(DISTRIBUTION_OF.get(name, name)) not in declared
    }
    assert not missing, f"imported at load time but not in [project] dependencies: {missing}"
