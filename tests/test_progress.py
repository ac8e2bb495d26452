"""Progress of a run's stages: a bar redrawn in place on a terminal, plain lines otherwise."""

import io

from cluster import pipeline


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal(monkeypatch):
    out = _Terminal()
    monkeypatch.setattr(pipeline.sys, "stdout", out)
    progress = pipeline._Progress("pretrain", 50, print)
    progress.add(25)
    progress.add(25)
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 3 and text.endswith("\n") and text.count("\n") == 1
    assert frames[0].startswith("pretrain:   0%|") and "0/50 parties" in frames[0]
    assert " 50%|###############               | 25/50 parties [" in frames[1] and "s<" in frames[1]
    assert frames[2].startswith("pretrain: 100%|" + "#" * 30 + "| 50/50 parties [")


def test_lines_when_piped(monkeypatch):
    monkeypatch.setattr(pipeline.sys, "stdout", io.StringIO())  # not a TTY
    lines: list[str] = []
    progress = pipeline._Progress("fine-tune + evaluate", 30, lines.append)
    for _ in range(3):
        progress.add(10)
    assert lines[0].startswith("fine-tune + evaluate: 10/30 parties (") and lines[-1].startswith(
        "fine-tune + evaluate: 30/30 parties ("
    )
    printed = io.StringIO()
    monkeypatch.setattr(pipeline.sys, "stdout", printed)
    pipeline._Progress("fusion", 2, print, "methods", lines=False).add(2)  # piped: the stage logs its own line
    assert printed.getvalue() == ""


def test_bar_text():
    assert pipeline._bar("fusion", 1, 4, "methods", 2.0, width=8) == "fusion:  25%|##      | 1/4 methods [2.0s<6.0s]"
