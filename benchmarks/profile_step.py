"""Where the time of the ResNet-20 train step goes on this machine: a profile by XLA op kind.

Traces a few calls of the step ``ap_jax.cycle`` trains with (``benchmarks.train_step.driver_step``:
masks, no in-step ReLU counting; ``--count-relu`` adds it) with
``jax.profiler`` and XLA:CPU's per-op trace events, then prints the time per step of each op
kind (an op's name without its ``.N`` suffix: ``ynn_fusion`` is a convolution or dot handed to
YNNPACK, ``dot_general`` an XLA GEMM, ``concatenate``/``pad_slice_fusion`` data movement, the
other ``*_fusion`` rows elementwise and reduction loops such as BatchNorm and ReLU) and the
slowest single ops. XLA:CPU may run independent ops side by side, so the op sum can differ
from the wall time per step, which is printed too. When ``torch`` is importable (the ``[bench]``
extra), PyTorch's reference step is profiled too, op by op, for the comparison.

Run from the repository root: ``python -m benchmarks.profile_step [--impl lax] [--count-relu]
[--write]``; ``--write`` also writes the tables to ``benchmarks/PROFILE.md``.
"""

from __future__ import annotations

import os

TRACEME = "--xla_cpu_enable_xprof_traceme=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRACEME}".strip()  # before jax starts

import argparse  # noqa: E402
import collections  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

from ap_jax.config import positive_int  # noqa: E402
from benchmarks import train_step  # noqa: E402
from benchmarks.reporting import command_line  # noqa: E402

PROFILE = Path(__file__).resolve().parent / "PROFILE.md"
RUNTIME = ("$", "ThunkExecutor", "PjitFunction", "CommonPjRt", "ParseArguments")


def op_times(trace_dir: Path) -> collections.Counter:
    """Microseconds per XLA op name, summed over the perfetto trace written to ``trace_dir``."""
    path = next(trace_dir.rglob("*.trace.json.gz"))
    events = json.loads(gzip.decompress(path.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith(RUNTIME):
            totals[event["name"]] += event.get("dur", 0)
    return totals


def by_kind(totals: collections.Counter) -> collections.Counter:
    """The op times summed over ops of the same kind (name without the ``.N`` suffix)."""
    kinds: collections.Counter = collections.Counter()
    for name, micros in totals.items():
        kinds[re.sub(r"\.\d+$", "", name)] += micros
    return kinds


def torch_op_times(batch: int, steps: int) -> list[tuple[str, float]] | None:
    """(op, ms per step) of PyTorch's reference step by self CPU time, or None without torch."""
    run = train_step.torch_step(batch)
    if run is None:
        return None
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    rows = [(e.key, e.self_cpu_time_total / steps / 1e3) for e in prof.key_averages()]
    return sorted(rows, key=lambda row: -row[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=("auto", "fast", "lax"), default="auto", help="convolution path")
    parser.add_argument("--count-relu", action="store_true", help="profile the step with in-step ReLU counting")
    parser.add_argument("--batch", type=positive_int, default=128)
    parser.add_argument("--steps", type=positive_int, default=5, help="profiled steps")
    parser.add_argument("--top", type=positive_int, default=20, help="rows of each table")
    parser.add_argument("--write", action="store_true", help=f"also write {PROFILE.name}")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch's op profile")
    args = parser.parse_args(argv)
    model, variables, tx, images, labels = train_step._setup(args.batch, args.batch * 4)
    run = train_step.driver_step(model, variables, tx, images, labels, args.batch, args.impl, args.count_relu)
    for _ in range(3):
        run()
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(args.steps):
                run()
            wall = (time.perf_counter() - start) / args.steps
        totals = op_times(Path(tmp))
    op_sum = sum(totals.values()) / args.steps / 1e3
    lines = [
        f"Machine: {train_step.machine()}", "", f"Command: `{command_line('benchmarks.profile_step', argv)}`", "",
        f"ResNet-20 train step as the driver runs it, batch {args.batch}, conv path {args.impl}, ReLU counting "
        f"{args.count_relu}: {wall * 1e3:.1f} ms per step while traced (tracing adds overhead), "
        f"sum of op times {op_sum:.1f} ms over {args.steps} steps.", "",
        "| op kind | ms per step | share of op time |", "|---|---|---|",
    ]
    for kind, micros in by_kind(totals).most_common(args.top):
        ms = micros / args.steps / 1e3
        lines.append(f"| {kind} | {ms:.2f} | {ms / op_sum:.1%} |")
    lines += ["", "| slowest ops | ms per step |", "|---|---|"]
    lines += [f"| {name} | {micros / args.steps / 1e3:.2f} |" for name, micros in totals.most_common(args.top)]
    torch_rows = None if args.no_torch else torch_op_times(args.batch, args.steps)
    if torch_rows is not None:
        lines += ["", f"PyTorch's step (same network, batch and optimizer) by self CPU time, sum "
                  f"{sum(ms for _, ms in torch_rows):.1f} ms per step:", "",
                  "| PyTorch op | ms per step |", "|---|---|"]
        lines += [f"| {name} | {ms:.2f} |" for name, ms in torch_rows[: args.top]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        PROFILE.write_text("## Profile of the train step (written by `benchmarks/profile_step.py --write`)\n\n" + text)

if __name__ == "__main__":
    main()
