"""Run ``experiments.compare_ap`` and stop it with a signal at the N-th hit of a chosen point.

    python tests/crash.py POINT N SIGNAL [compare_ap flags...]

Points: ``step`` (a train step is about to run: mid-epoch), ``commit`` (orbax has written a
checkpoint into its temporary directory and is about to rename it into place), ``prune`` (a
cycle's training and records are done, its pruning is about to start), ``row`` (half of the
next metrics.jsonl text has been written). SIGNAL is ``KILL`` (the process dies at once) or
``INT`` (Ctrl-C, which compare_ap turns into a clean stop). Used by ``test_resume.py`` only.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

from orbax.checkpoint._src.path import atomicity

from ap_jax import cycle, records, train
from experiments import compare_ap


def main() -> int:
    point, nth, signame, *flags = sys.argv[1:]
    hits = 0

    def due() -> bool:
        nonlocal hits
        hits += 1
        return hits == int(nth)

    def stop() -> None:
        os.kill(os.getpid(), getattr(signal, f"SIG{signame}"))

    def stop_first(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            if due():
                stop()
            return fn(*args, **kwargs)
        return wrapped

    if point == "step":
        make_steps = train.make_steps
        train.make_steps = lambda *a, **k: (s := make_steps(*a, **k)).__class__(
            stop_first(s.train), s.correct, s.relu_counts)
    elif point == "commit":
        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize_or_stop(self):
            if due():
                stop()
            await finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_stop
    elif point == "prune":
        cycle.prune_step = stop_first(cycle.prune_step)
    elif point == "row":
        append_rows = records.append_rows

        def half_or_all(path, rows):
            if not due():
                return append_rows(path, rows)
            text = records.to_text(rows)
            with open(path, "a") as f:
                f.write(text[: len(text) // 2])
            stop()

        records.append_rows = half_or_all
    else:
        raise SystemExit(f"unknown point {point!r}")
    return compare_ap.main(flags)


if __name__ == "__main__":
    sys.exit(main())
