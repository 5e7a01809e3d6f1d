"""Unsupported Python or PyTorch: one line at import, exit 2 from the command."""

from __future__ import annotations

import subprocess
import sys

from gmpq_ray._versions import MIN_TORCH, environment_problem
from tests.conftest import REPO


def test_supported_and_unsupported_versions():
    assert environment_problem((3, 11), "2.11.0+cu130") is None
    assert environment_problem((3, 13), "2.14.1") is None
    assert environment_problem((3, 12), "2.12.0a0+git1234") is None
    assert environment_problem((3, 10), "2.14.1") == "gmpq-ray needs Python >= 3.11, this is Python 3.10"
    assert environment_problem((3, 11), "2.10.2").startswith("gmpq-ray needs PyTorch >= 2.11, this is torch 2.10.2")
    assert MIN_TORCH == (2, 11)


# The package imported where the installed torch reports 2.9.1 (its metadata patched, nothing installed).
_FAKE_OLD_TORCH = (
    "import importlib.metadata as m, sys; real = m.version; "
    "m.version = lambda name: '2.9.1' if name == 'torch' else real(name); sys.argv = [{argv0!r}, 'bops']; "
    "import gmpq_ray.cli"
)


def test_old_torch_at_import_and_from_the_command():
    command = subprocess.run([sys.executable, "-c", _FAKE_OLD_TORCH.format(argv0="gmpq")], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert command.returncode == 2
    assert command.stderr.strip().splitlines() == ["gmpq: error: gmpq-ray needs PyTorch >= 2.11, this is torch 2.9.1 "
                                                   "(pip install -U 'torch>=2.11')"]
    library = subprocess.run([sys.executable, "-c", _FAKE_OLD_TORCH.format(argv0="python")], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert library.returncode == 1 and library.stderr.strip().splitlines()[-1] == (
        "ImportError: gmpq-ray needs PyTorch >= 2.11, this is torch 2.9.1 (pip install -U 'torch>=2.11')")
