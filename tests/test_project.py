"""The project's own rules: README and CI run the same test command; ruff and mypy are clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_commands = [c for c in _readme_commands() if "pytest" in c]
    assert len(test_commands) == 1
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    # Besides the README's command, CI only installs the redis-server the cluster tests start.
    assert ci_lines[0] == "command -v redis-server >/dev/null || (apt-get update && apt-get install -y redis-server)"
    assert ci_lines[1:] == test_commands
    assert test_commands[0].startswith("pip install torch==2.13.0 && ")


def test_readme_start_command_installs_and_starts() -> None:
    starts = [c for c in _readme_commands() if c.endswith("omost-bot")]
    assert starts == ['pip install torch==2.13.0 && pip install -e ".[all]" && omost-bot']


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in the [test] extra")
def test_ruff_is_clean() -> None:
    result = subprocess.run(["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
