"""A family is one file: a copy of each family file with every model name and family label renamed (``copy_``
prefix), put into the models package, registers its nets and passes the registry's own tests.

The copy is imported in a child process (the models package's ``__path__`` extended by a temporary folder), so the
copies never reach this process's registry; the registry tests run there through ``pytest.main``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import cnnzoo
import cnnzoo.models

TESTS = Path(__file__).parent
PREFIX = "copy_"
INFRASTRUCTURE = {"registry", "weights"}  # public modules of models/ that are not families
FAMILIES = sorted(
    m.name
    for m in pkgutil.iter_modules(cnnzoo.models.__path__)
    if not m.name.startswith("_") and m.name not in INFRASTRUCTURE
)

# Runs in the child: put the folder holding the copies on the models package's path, import each copy (it registers
# its builders), then run pytest with the remaining arguments in this same process.
BOOT = """
import importlib, sys
import cnnzoo.models
cnnzoo.models.__path__.append(sys.argv[1])
for module in sys.argv[2].split(","):
    importlib.import_module("cnnzoo.models." + module)
import pytest
sys.exit(pytest.main(sys.argv[3:]))
"""


def renamed_copy(module: str, prefix: str = PREFIX) -> tuple[str, list[str]]:
    """The source of ``cnnzoo.models.<module>`` with every name it registers and every family label it uses
    prefixed, and the new names."""
    source = Path(importlib.import_module(f"cnnzoo.models.{module}").__file__).read_text()
    infos = [
        cnnzoo.get_model_info(n)
        for n in cnnzoo.list_models()
        if cnnzoo.get_model_info(n).builder.__module__ == f"cnnzoo.models.{module}"
    ]
    for name in sorted({i.name for i in infos}, key=len, reverse=True):
        source = re.sub(rf"\b{name}\b", prefix + name, source)
    for family in {i.family for i in infos}:
        source = source.replace(f'family="{family}"', f'family="{prefix}{family}"')
    return source, [prefix + i.name for i in infos]


def test_a_renamed_copy_of_every_family_file_passes_the_registry_tests(tmp_path):
    """All the copies in one child process (one start, and the package-wide rules checked once with every copy in
    the registry beside the originals); the report names the family of any copy that fails."""
    names = {}
    for module in FAMILIES:
        source, names[module] = renamed_copy(module)
        assert names[module], f"{module} registers nothing"
        (tmp_path / f"{PREFIX}{module}.py").write_text(source)
    # The copies' own nets on the meta device (shapes, options, contract, cam layer), and the package-wide rules; the
    # real forward/backward of every net is the original file's test (same layers, other names), and so are the
    # meta passes through a thousand layers (the renaming is proved by the shallower nets of the same file).
    selected = (
        f"({PREFIX} and not forward_backward and not too_small and not 1202 and not 1001) "
        "or labels_follow or every_family or plain_twins"
    )
    args = [str(TESTS / "test_registry.py"), "-q", "-p", "no:cacheprovider", "-k", selected, "-rf"]
    copies = ",".join(PREFIX + m for m in FAMILIES)
    done = subprocess.run(
        [sys.executable, "-c", BOOT, str(tmp_path), copies, *args],
        capture_output=True,
        text=True,
        timeout=1800,  # wall clock: a busy machine; idle, all copies take well under a minute
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    # Every copied net went through the per-model tests (at least the keyword-only and meta-shape ones).
    copied = sum(len(n) for n in names.values())
    assert passed and int(passed.group(1)) >= 2 * copied, done.stdout[-1000:]
    assert "failed" not in done.stdout
