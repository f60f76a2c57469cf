"""DESIGN.md's one-way rule: adapters never load torch or the engine; the engine never sees a chat."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "bitsandbytes")


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


def test_importing_adapters_does_not_import_torch() -> None:
    modules = ["adapters"] + [
        f"adapters.{p.stem}" for p in (ROOT / "adapters").glob("*.py") if p.stem != "__init__"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError as e:\n"
        "        if e.name in ('telegram', 'discord'):\n"
        "            continue  # a platform's optional extra is not installed\n"
        "        raise\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {(*HEAVY, 'omost_engine')!r}]\n"
        "print(','.join(sorted(bad)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""


def test_adapters_source_imports_no_engine_or_torch() -> None:
    bad = {(f, m) for f, m in _imports("adapters") if m in (*HEAVY, "omost_engine", "bot")}
    assert bad == set()


def test_engine_never_imports_the_chat_side() -> None:
    bad = {(f, m) for f, m in _imports("omost_engine") if m in ("bot", "adapters")}
    assert bad == set()


def test_preview_command_does_not_load_torch() -> None:
    code = (
        "import sys\n"
        "from bot.cli import build_parser\n"
        "build_parser()\n"
        "import omost_engine.canvas_code, omost_engine.preview, omost_engine.prompts\n"
        "print(','.join(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""
