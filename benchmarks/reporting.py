"""What every benchmark's written report shares: the command that produced it and the block it goes in."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from experiments import blocks

REPO = Path(__file__).resolve().parents[1]
PERFORMANCE = REPO / "docs" / "performance.md"


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The shell command that reruns ``module`` with ``argv`` (default: this process's), quoted so it pastes."""
    given = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in given)])


def write_block(text: str, backend: str, block: str, path: Path = PERFORMANCE) -> None:
    """Put ``text`` in ``path``'s block ``block`` of ``backend`` (``experiments.blocks``), adding
    it (and a Performance section) at the end if missing."""
    path.write_text(blocks.put(path.read_text(), block.format(backend=backend), text, heading="## Performance"))
