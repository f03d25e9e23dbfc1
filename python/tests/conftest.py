"""Shared test support: the repository's fixtures, the default model and the CLI binary.

A test that needs the default model or the CLI and cannot find them fails under CI (the
test script fetches and builds both first) and is skipped loudly elsewhere.
"""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
DEFAULT_GGUF = pathlib.Path(
    os.environ.get("GLASSBOX_HOME", pathlib.Path.home() / ".cache" / "glassbox")
) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _missing(what: str):
    msg = f"SKIPPED: {what}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " (CI fetches and builds it first: this is a failure)")
    print("\n" + msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def default_model():
    import glassbox

    if not DEFAULT_GGUF.exists():
        _missing(f"the default model is not fetched ({DEFAULT_GGUF}); run `glassbox fetch --model-only`")
    return glassbox.Model.from_pretrained("default")


@pytest.fixture(scope="session")
def cli():
    """Runs the glassbox CLI (GLASSBOX_BIN, else target/debug/glassbox)."""
    exe = pathlib.Path(os.environ.get("GLASSBOX_BIN", ROOT / "target" / "debug" / "glassbox"))
    if not exe.exists():
        _missing(f"the glassbox CLI is not built ({exe}); run `cargo build -p glassbox`")

    def run(*args):
        p = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
        assert p.returncode == 0, f"glassbox {' '.join(map(str, args))} failed:\n{p.stderr}"
        return p.stdout

    return run
