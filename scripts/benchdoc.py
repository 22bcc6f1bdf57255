"""The one writer of a benchmark's section of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(section: str, text: str, path: Path = BENCHMARKS) -> None:
    """Put ``text`` between ``<!-- bench:SECTION:start -->`` and its end marker (added at the
    end of the file when the section is new), leaving the rest of the file as it was."""
    doc = path.read_text(encoding="utf-8")
    start, end = f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"
    if start not in doc:
        doc += f"\n{start}\n{end}\n"
    a, b = doc.index(start) + len(start), doc.index(end)
    path.write_text(doc[:a] + "\n" + text + doc[b:], encoding="utf-8")
