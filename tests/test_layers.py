"""The layers' import rule: agent/ knows no platform and no store; adapters talk to bot/ only;
bot/'s core never imports an adapter (only the composition root, bot/cli.py, does); the
product never imports the benchmarks or the tests; the adapters' pure rules load without a
browser or a model client."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSITION_ROOT = {"bot/cli.py"}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of everything a module imports, lazily inside functions included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def offenders(package: str, forbidden: tuple[str, ...], exempt: set[str] = frozenset()) -> list[str]:
    bad = []
    for path in modules(package):
        name = path.relative_to(ROOT).as_posix()
        if name in exempt:
            continue
        for module in imported_packages(path):
            if module.split(".")[0] in forbidden:
                bad.append(f"{name} imports {module}")
    return bad


@pytest.mark.parametrize("package, forbidden, exempt", [
    ("agent", ("bot", "adapters", "bench", "tests"), set()),
    ("adapters", ("agent", "bench", "tests"), set()),
    ("bot", ("adapters", "bench", "tests"), COMPOSITION_ROOT),
])
def test_layers_import_only_downwards(package, forbidden, exempt):
    assert offenders(package, forbidden, exempt) == []


def test_the_rule_catches_an_upward_import(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from adapters.console import chat\n")
    assert "adapters.console" in imported_packages(tmp_path / "m.py")


def test_pure_rules_load_without_a_browser_or_model_client():
    code = ("import sys, adapters.discord.rules, adapters.slack.rules, adapters.chunking, bot.messages\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('playwright', 'langchain_google_genai', 'langgraph', 'discord', 'slack_bolt'))\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
