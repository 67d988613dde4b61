"""README.md's "AP in your own loop" code runs as printed: three cycles, the sparsity each prune leaves."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str) -> str:
    """The first ```python block after the heading ``heading`` (any level) in README.md."""
    text = README.read_text()
    after = text[re.search(rf"^#+ {heading}$", text, re.M).start():]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_own_loop_snippet_runs_and_prunes_as_it_says(capsys):
    code = section_code("AP in your own loop")
    assert len(code.splitlines()) <= 25
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    rows = [re.fullmatch(r"cycle (\d): sparsity ([\d.]+), DNR ([\d.]+)", line).groups() for line in lines]
    assert [(c, s) for c, s, _ in rows] == [("0", "0.000"), ("1", "0.200"), ("2", "0.360")]  # 1 - 0.8 ** cycle
    assert all(0 < float(dnr) < 1 for _, _, dnr in rows)
