"""Data parallelism: a 1-D ``('data',)`` device mesh, shardings, global batches, multi-host setup.

One code path serves 1 and N devices, on one host or several. The train state and the uint8
dataset are replicated (``NamedSharding(mesh, P())``); each step's vector of example indices is
sharded over ``'data'`` (``P('data')``), so ``images[index]`` inside the jitted step is a batch
split on its leading axis, and XLA's SPMD partitioner inserts the all-reduces (gradients,
BatchNorm moments, loss). BatchNorm therefore normalises with global-batch statistics and a
step's result does not depend on the device count, up to float summation order (see
``tests/test_parallel.py`` for the tolerances). The global batch must divide by the device count.

Multi-host: call :func:`initialize` first (flags, or ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, or a cluster JAX detects itself). Every process
computes the same global index vector (it is a pure function of the seed) and feeds only its
own rows through ``jax.make_array_from_process_local_data`` (:func:`shard_batch`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"
ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def device_count(requested: int | None = None) -> int:
    """``requested`` checked against the visible devices (one-line ``ValueError``), or all when None."""
    available = jax.device_count()
    count = available if requested is None else requested
    if not 1 <= count <= available:
        raise ValueError(f"--devices {count} is not available: pass 1 to {available} "
                         f"({available} {jax.devices()[0].device_kind} device(s) visible)")
    return count


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D ``('data',)`` mesh over the first ``num_devices`` devices (all of them when None).

    Auto axis type: shardings are propagated by the compiler, as ``jax.jit`` + ``NamedSharding``
    code expects (``jax.make_mesh`` defaults to explicit axes).
    """
    count = device_count(num_devices)
    return jax.make_mesh((count,), (AXIS,), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:count])


def resolve(mesh: Mesh | None) -> Mesh:
    """``mesh``, or a mesh over every device when None."""
    return make_mesh() if mesh is None else mesh


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (train state, dataset, keys, counts)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Split on the leading (batch) axis over ``'data'``."""
    return NamedSharding(mesh, P(AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise a one-line ``ValueError`` unless ``batch_size`` divides over the mesh's devices."""
    check_split(batch_size, mesh.size)


def check_split(batch_size: int, n: int, name: str = "batch size") -> None:
    """Raise a one-line ``ValueError`` unless ``batch_size`` divides over ``n`` devices; the
    message calls the value ``name`` (a command line passes its flag, ``--batch-size``)."""
    if batch_size % n:
        lower = batch_size - batch_size % n
        options = f"{lower} or {lower + n}" if lower else f"{n}"
        raise ValueError(f"{name} {batch_size} does not split over {n} devices: pass a multiple "
                         f"of {n} (e.g. {options})")


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf replicated over ``mesh`` (no copy for leaves already placed so)."""
    return jax.device_put(tree, replicated(mesh))


def process_rows(batch_size: int, mesh: Mesh) -> slice:
    """The contiguous rows of a sharded global batch that this process's devices hold."""
    check_batch_size(batch_size, mesh)
    spans = batch_sharded(mesh).addressable_devices_indices_map((batch_size,)).values()
    start = min(s[0].start or 0 for s in spans)
    stop = max(s[0].stop if s[0].stop is not None else batch_size for s in spans)
    if stop - start != batch_size // mesh.size * len(spans):
        raise ValueError(f"this process's devices do not hold contiguous rows of the mesh {mesh}")
    return slice(start, stop)


def shard_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global array sharded ``P('data')`` from ``batch``, the same global batch on every process.

    Each process contributes only its own rows (``jax.make_array_from_process_local_data``), so
    on several hosts no process ships another's share.
    """
    batch = np.asarray(batch)
    return shard_local_batch(batch[process_rows(batch.shape[0], mesh)], batch.shape[0], mesh)


def shard_local_batch(local: np.ndarray, batch_size: int, mesh: Mesh) -> jax.Array:
    """A global ``P('data')`` array of ``batch_size`` rows from this process's rows ``local`` only.

    For streamed data, where each process reads just its own :func:`process_rows` of the batch.
    """
    local = np.asarray(local)
    rows = process_rows(batch_size, mesh)
    if local.shape[0] != rows.stop - rows.start:
        raise ValueError(f"this process holds rows {rows.start}:{rows.stop} of a batch of {batch_size}, "
                         f"got {local.shape[0]} rows")
    return jax.make_array_from_process_local_data(batch_sharded(mesh), local, (batch_size, *local.shape[1:]))


def eval_batches(num_examples: int, batch_size: int, mesh: Mesh) -> Iterator[tuple[np.ndarray, int]]:
    """``(index, multiplicity)`` pairs that cover ``range(num_examples)`` exactly once, for eval.

    Batches are ``batch_size`` rounded down to a multiple of the device count (at least one per
    device). A final ``r`` examples that do not divide come as each index repeated once per
    device, with multiplicity ``n``: every statistic used in eval (correct predictions, ReLU
    counts) is a per-example sum, so dividing it by ``n`` is exact and one sharded step serves.
    """
    n = mesh.size
    size = max(n, batch_size - batch_size % n)
    for start in range(0, num_examples, size):
        stop = min(start + size, num_examples)
        whole = stop - (stop - start) % n
        if whole > start:
            yield np.arange(start, whole, dtype=np.int32), 1
        if stop > whole:
            yield np.repeat(np.arange(whole, stop, dtype=np.int32), n), n


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start ``jax.distributed`` when a multi-host run is configured; True if it was started.

    Arguments left None fall back to ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``. With none of them set nothing happens (a single-process run). Must run
    before anything touches a device.
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    values = {k: v if v is not None else os.environ.get(ENV[k]) for k, v in given.items()}
    if all(v is None for v in values.values()):
        return False
    if any(v is None for v in values.values()):
        missing = ", ".join(f"--{k.replace('_', '-')} (or ${ENV[k]})" for k, v in values.items() if v is None)
        raise ValueError(f"a multi-host run needs all three settings; missing {missing}")
    try:
        count, index = int(values["num_processes"]), int(values["process_id"])
    except ValueError:
        raise ValueError(f"a multi-host run needs integer process counts, got {ENV['num_processes']}="
                         f"{values['num_processes']!r} and {ENV['process_id']}={values['process_id']!r}") from None
    check_hosts(count, index)
    jax.distributed.initialize(values["coordinator_address"], count, index)
    return True


def is_main_process() -> bool:
    """True on process 0, the one that writes records, reports and plots."""
    return jax.process_index() == 0


def describe(mesh: Mesh) -> dict[str, Any]:
    """Device count and kind of ``mesh``, and the process count, for provenance."""
    device = mesh.devices.flat[0]
    return {"mesh_devices": mesh.size, "mesh_device_kind": device.device_kind,
            "platform": device.platform, "process_count": jax.process_count()}


def add_args(parser: argparse.ArgumentParser) -> None:
    """``--devices`` and the three multi-host flags (not part of any config hash)."""
    group = parser.add_argument_group("devices and hosts")
    group.add_argument("--devices", type=int, default=None, metavar="N",
                       help="train on the first N devices of the ('data',) mesh (default: all)")
    group.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                       help=f"multi-host: process 0's address (default: ${ENV['coordinator_address']})")
    group.add_argument("--num-processes", type=int, default=None, metavar="P",
                       help=f"multi-host: number of processes (default: ${ENV['num_processes']})")
    group.add_argument("--process-id", type=int, default=None, metavar="I",
                       help=f"multi-host: this process's id, 0..P-1 (default: ${ENV['process_id']})")


class BackendError(ValueError):
    """JAX's backend cannot start with the environment given (``JAX_PLATFORMS``, ``XLA_FLAGS``)."""


PROBE = "import jax; jax.devices()"


def start_backend() -> None:
    """Start JAX's backend, or raise a one-line ``BackendError`` saying which setting stops it.

    XLA rejects a bad ``XLA_FLAGS`` by aborting the process, which no handler can catch, so when
    that variable is set and the backend has not started yet, a child process tries it first.
    """
    from jax._src import xla_bridge

    if os.environ.get("XLA_FLAGS") and not xla_bridge.backends_are_initialized():
        probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
        if probe.returncode:
            last = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
            raise BackendError(f"JAX cannot start with XLA_FLAGS={os.environ['XLA_FLAGS']!r}: "
                               f"{last.split('] ', 1)[-1]}; fix or unset XLA_FLAGS")
    try:
        jax.devices()
    except RuntimeError as err:
        platforms = os.environ.get("JAX_PLATFORMS")
        setting = f"JAX_PLATFORMS={platforms!r}" if platforms else "this machine's devices"
        raise BackendError(f"JAX cannot start with {setting}: {str(err).splitlines()[0]}") from None


def check_hosts(num_processes: int | None, process_id: int | None) -> None:
    """Raise a one-line ``ValueError`` unless the multi-host counts given are possible."""
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {num_processes}")
    if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
        raise ValueError(f"--process-id must be in [0, --num-processes), got {process_id}")


def devices_from_args(args: argparse.Namespace) -> int:
    """Start multi-host if :func:`add_args`' flags or the environment ask for it; the device count.

    A bad multi-host setting or a backend that cannot start is a one-line ``ValueError``.
    """
    check_hosts(args.num_processes, args.process_id)
    initialize(args.coordinator_address, args.num_processes, args.process_id)
    start_backend()
    return device_count(args.devices)
