"""Shared fixtures of the end-to-end tests: paths of the binary, the
embedded model and the reference data, and a runner with a time limit."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def paraserve_bin():
    path = Path(os.environ.get("PARASERVE_BIN", ROOT / "build" / "paraserve"))
    if not path.exists():
        pytest.fail(f"paraserve binary not found at {path}: build first (scripts/build)")
    return str(path)


@pytest.fixture(scope="session")
def model_path():
    path = Path(os.environ.get("PARASERVE_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.exists():
        pytest.fail(f"embedded model not found at {path}: run scripts/fetch-model")
    return str(path)


@pytest.fixture(scope="session")
def run(paraserve_bin):
    """run(*args, timeout=...) -> CompletedProcess of `paraserve args...`."""
    def _run(*args, timeout=120, input=None):
        return subprocess.run([paraserve_bin, *map(str, args)], capture_output=True,
                              timeout=timeout, input=input)
    return _run
