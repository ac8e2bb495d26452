"""The README stays short and the docs keep up with the CLI: every flag is documented, every local link resolves."""

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


def test_local_links_resolve():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([\w./-]+\.(?:md|png))(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
