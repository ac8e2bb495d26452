"""The README stays short and the docs keep up with the CLI: every flag is documented, every local link resolves,
every bench command runs a bench module."""

from __future__ import annotations

import re
from pathlib import Path

from cluster.cli import parser

ROOT = Path(__file__).resolve().parents[1]


def _flags() -> set[str]:
    sub = next(a for a in parser()._actions if a.dest == "command")
    return {
        opt for p in sub.choices.values() for a in p._actions for opt in a.option_strings if opt not in ("-h", "--help")
    }


def test_readme_is_short_and_every_flag_is_documented():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    text = readme + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    missing = sorted(f for f in _flags() if f not in text)
    assert not missing, f"flags not in README.md or docs/: {missing}"


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")]


def test_local_links_resolve():
    for page in _pages():
        for target in re.findall(r"\]\(([\w./-]+\.(?:md|png))(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_every_bench_command_runs_an_existing_bench_module():
    # Prepare
    modules = {p.stem for p in (ROOT / "bench").glob("*.py")}
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in [*_pages(), *(ROOT / "bench").glob("*.py")]}

    # Execute
    named = {(page, m) for page, text in texts.items() for m in re.findall(r"python -m bench\.(\w+)", text)}
    as_files = {(page, c) for page, text in texts.items() for c in re.findall(r"python3? \S*bench/\w+\.py", text)}

    # Assert
    assert named, "no python -m bench.<name> command found"
    assert not as_files, f"bench scripts run as files (python -m bench.<name> instead): {sorted(as_files)}"
    unknown = sorted((page, m) for page, m in named if m not in modules)
    assert not unknown, f"commands naming no module in bench/: {unknown}"
