"""Marked blocks: the part of a Markdown page that one command owns while others write the rest.

A block is ``<!-- NAME start -->``, its text, ``<!-- NAME end -->``. The command that owns it
rewrites only what lies between its markers; a command that rewrites the whole page carries the
block over, so neither undoes the other.
"""

from __future__ import annotations

from pathlib import Path


def edges(name: str) -> tuple[str, str]:
    """The start and end markers of block ``name``."""
    return f"<!-- {name} start -->", f"<!-- {name} end -->"


def wrap(name: str, text: str) -> str:
    """``text`` between the markers of block ``name``."""
    start, end = edges(name)
    return f"{start}\n{text}\n{end}"


def find(page: str, name: str) -> str | None:
    """Block ``name`` of ``page``, markers included, or None if the page lacks either marker."""
    start, end = edges(name)
    first = page.find(start)
    last = page.find(end, first) if first >= 0 else -1
    return page[first: last + len(end)] if last >= 0 else None


def put(page: str, name: str, text: str, heading: str = "") -> str:
    """``page`` with block ``name`` holding ``text``: in place of the old block, else appended at
    the end (under ``heading`` when given and not already in the page)."""
    block = wrap(name, text)
    if (old := find(page, name)) is not None:
        return page.replace(old, block, 1)
    section = f"\n\n{heading}" if heading and f"\n{heading}\n" not in page else ""
    return page.rstrip("\n") + section + "\n\n" + block + "\n"


def rewrite(path: Path, name: str, text: str) -> bool:
    """Rewrite block ``name`` of the page at ``path`` with ``text`` if the page holds that block's
    markers (a page without them, or no page, is left alone); whether it did."""
    old = path.read_text() if path.is_file() else ""
    if find(old, name) is None:
        return False
    path.write_text(put(old, name, text))
    return True
