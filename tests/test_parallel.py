"""Data parallelism: 8 fake CPU devices and 2 processes x 4 devices against one device and numpy.

The main pytest process sees one device (other test files must not change), so the multi-device
tests run in a child pytest with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(``test_eight_device_suite``); in the parent they are skipped and in the child that launcher is.
Float results of N devices equal one device's up to summation order: ``RTOL``/``ATOL`` below;
integer counts, masks and step counters must be equal exactly.
"""

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parallel_scenario as scenario
from ap_jax import parallel, stats, train

REPO = Path(__file__).resolve().parents[1]
CHILD = os.environ.get("AP_JAX_TEST_EIGHT_DEVICES") == "1"
eight = pytest.mark.skipif(not CHILD, reason="runs in the 8-device child of test_eight_device_suite")
RTOL, ATOL = 1e-5, 1e-6
EIGHT = SimpleNamespace(size=8)  # what check_batch_size and eval_batches read from a mesh


def assert_same(got: dict, want: dict) -> None:
    """Integers, booleans and keys equal exactly; floats within RTOL/ATOL."""
    assert got.keys() == want.keys()
    for key in want:
        if np.asarray(want[key]).dtype.kind == "f":
            np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.skipif(CHILD, reason="this is the launcher")
def test_eight_device_suite():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "AP_JAX_TEST_EIGHT_DEVICES": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" in result.stdout  # only the launcher skipped


def test_batch_not_divisible_is_a_one_line_error():
    parallel.check_batch_size(6, SimpleNamespace(size=1))  # one device takes any batch
    with pytest.raises(ValueError, match=r"^batch size 100 does not split over 8 devices: pass a multiple of 8 "
                                         r"\(e\.g\. 96 or 104\)$"):
        parallel.check_batch_size(100, EIGHT)
    with pytest.raises(ValueError, match=r"\(e\.g\. 8\)$"):
        parallel.check_batch_size(6, EIGHT)


def test_eval_batches_cover_every_example_once_with_multiplicity():
    batches = list(parallel.eval_batches(21, 10, EIGHT))
    assert [(b.tolist(), m) for b, m in batches] == [
        (list(range(8)), 1), (list(range(8, 16)), 1), (np.repeat(np.arange(16, 21), 8).tolist(), 8)]
    weight = np.zeros(1003)
    for index, multiplicity in parallel.eval_batches(1003, 100, EIGHT):
        assert index.size % 8 == 0 and index.size <= 96 * multiplicity
        np.add.at(weight, index, 1 / multiplicity)
    np.testing.assert_array_equal(weight, 1.0)


def test_pack_and_unpack_counts_round_trip():
    counts = {"a": {"zeros": jnp.array([3, 0, 7], jnp.int32), "positions": jnp.array(9, jnp.int32)},
              "b": {"Block_0": {"zeros": jnp.array([1], jnp.int32), "positions": jnp.array(4, jnp.int32)}}}
    packed = stats.pack_counts(counts)
    assert packed.dtype == jnp.int32 and packed.shape == (6,)
    assert_same(scenario.flat("", stats.unpack_counts(packed, counts)), scenario.flat("", counts))
    with pytest.raises(ValueError, match=r"packed counts of shape \(5,\) do not match a layout of 6 counts"):
        stats.unpack_counts(packed[:5], counts)


def test_initialize_without_settings_is_a_no_op_and_partial_settings_fail(monkeypatch):
    for name in parallel.ENV.values():
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize() is False
    with pytest.raises(ValueError, match="missing --num-processes"):
        parallel.initialize("127.0.0.1:1234", process_id=0)


def test_make_mesh_rejects_unavailable_device_counts():
    with pytest.raises(ValueError, match=r"--devices 99 is not available: pass 1 to"):
        parallel.make_mesh(99)


def numpy_relu0_zeros(variables, x: np.ndarray) -> np.ndarray:
    """Per-channel zeros of the first ReLU (conv0 3x3 SAME -> BatchNorm in eval mode) in numpy."""
    p, bn = jax.tree_util.tree_map(np.asarray, variables["params"]), variables["batch_stats"]["bn0"]
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = sum(np.einsum("nhwc,co->nhwo", padded[:, i:i + 8, j:j + 8], p["conv0"]["kernel"][i, j])
               for i in range(3) for j in range(3)) + p["conv0"]["bias"]
    pre = (conv - np.asarray(bn["mean"])) / np.sqrt(np.asarray(bn["var"]) + 1e-5) * p["bn0"]["scale"] + p["bn0"]["bias"]
    return (np.maximum(pre, 0) == 0).sum(axis=(0, 1, 2))


@eight
def test_shard_map_and_pmap_counts_equal_one_device_and_numpy():
    model, variables, *_ = scenario.setup(parallel.make_mesh())
    x = scenario.shifted_batch()
    whole = stats.relu_counts(model, variables, jnp.asarray(x), train=False)
    per_shard = [stats.relu_counts(model, variables, jnp.asarray(x[i:i + 2]), train=False) for i in range(0, 16, 2)]
    assert len({int(c["relu0"]["zeros"].sum()) for c in per_shard}) > 1, "shards should see different dead counts"
    np.testing.assert_array_equal(whole["relu0"]["zeros"], numpy_relu0_zeros(variables, x))
    mesh = parallel.make_mesh()
    assert mesh.size == 8
    sharded = jax.jit(functools.partial(stats.sharded_relu_counts, model, mesh=mesh, train=False))(
        variables, parallel.shard_batch(x, mesh))
    pmapped = stats.pmap_relu_counts(model, variables, jnp.asarray(x), train=False)
    for counts in (sharded, pmapped):
        assert_same(scenario.flat("", counts), scenario.flat("", whole))
        assert counts["relu0"]["zeros"].dtype == jnp.int32
    assert stats.dead_neuron_rate(sharded) == stats.dead_neuron_rate(whole)
    with pytest.raises(ValueError, match="batch size 12 does not split over 8 devices"):
        stats.sharded_relu_counts(model, variables, jnp.asarray(x[:12]), mesh, train=False)


@pytest.fixture(scope="module")
def one_device():
    return scenario.run(parallel.make_mesh(1))


@pytest.fixture(scope="module")
def eight_devices():
    return scenario.run(parallel.make_mesh())


@eight
def test_training_on_eight_devices_equals_one_device(one_device, eight_devices):
    assert_same(eight_devices, one_device)  # counts, train-step counts, params, BN stats, momentum, DNR, accuracy
    assert int(eight_devices["state.step"]) == scenario.STEPS


@eight
def test_mask_invariant_holds_on_eight_devices(eight_devices):
    got = eight_devices
    params = {k.removeprefix("state.params"): v for k, v in got.items() if k.startswith("state.params")}
    mask = {k.removeprefix("state.mask"): v for k, v in got.items() if k.startswith("state.mask")}
    pruned = [k for k in params if k.endswith("['kernel']") and not mask[k].all()]
    assert pruned, "the random mask should prune every kernel"
    for k in pruned:
        assert np.all(params[k][~mask[k]] == 0.0), k
        assert np.all(params[k][mask[k]] != 0.0), k


@eight
def test_train_epoch_rejects_a_batch_that_does_not_split():
    _, variables, mask, tx, steps = scenario.setup(parallel.make_mesh())
    state = train.fresh_state(variables["params"], variables["batch_stats"], mask, tx)
    with pytest.raises(ValueError, match=r"^batch size 12 does not split over 8 devices: pass a multiple of 8 "
                                         r"\(e\.g\. 8 or 16\)$"):
        train.train_epoch(steps, state, scenario.fake_dataset(), 12, jax.random.key(0), 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@eight
def test_two_processes_of_four_devices_equal_one_process_of_eight(tmp_path, eight_devices):
    port, out = free_port(), tmp_path / "two.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "AP_JAX_TEST_EIGHT_DEVICES")}
    workers = [subprocess.Popen([sys.executable, str(REPO / "tests" / "parallel_scenario.py"), str(pid), str(port),
                                 str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for pid in (0, 1)]
    logs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-3000:] for log in logs)
    two = dict(np.load(out))
    assert (int(two.pop("devices")), int(two.pop("processes"))) == (8, 2)
    assert_same(two, eight_devices)
