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


def _sanitizer_log_prefixes():
    """log_path prefixes from ASAN_OPTIONS / UBSAN_OPTIONS (a sanitized
    binary writes each report to PREFIX.PID); empty when none is set."""
    out = []
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        for opt in os.environ.get(var, "").split(":"):
            key, _, val = opt.partition("=")
            if key == "log_path" and val not in ("", "stderr", "stdout"):
                out.append(val)
    return out


def _sanitizer_reports():
    found = set()
    for prefix in _sanitizer_log_prefixes():
        d, base = os.path.split(prefix)
        if os.path.isdir(d or "."):
            found.update(os.path.join(d, f) for f in os.listdir(d or ".") if f.startswith(base + "."))
    return found


@pytest.fixture(scope="module", autouse=True)
def sanitizer_reports_fail_module():
    """With a sanitized binary and a log_path in ASAN_OPTIONS/UBSAN_OPTIONS,
    a report written while a module ran (its servers' leak checks at exit
    included: this fixture is torn down after the module's servers) fails
    that module.  Without a log_path this does nothing."""
    before = _sanitizer_reports()
    yield
    new = sorted(_sanitizer_reports() - before)
    if new:
        text = "".join(Path(p).read_text(errors="replace")[:4000] for p in new[:3])
        pytest.fail(f"sanitizer report(s) {new}:\n{text}", pytrace=False)


_reports_at_start = set()


def pytest_sessionstart(session):
    _reports_at_start.update(_sanitizer_reports())


def pytest_sessionfinish(session, exitstatus):
    """A report that appeared after the last module's check (a server that
    outlived its module) still fails the run."""
    new = sorted(_sanitizer_reports() - _reports_at_start)
    if new and session.exitstatus == 0:
        print(f"\nsanitizer report(s) written during the run: {new}")
        session.exitstatus = 1
