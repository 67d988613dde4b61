"""One process of the multi-device stream check that ``test_stream.py`` launches.

    python tests/stream_scenario.py DATA_DIR PROCESSES PROCESS_ID PORT

8 fake CPU devices in all, split over PROCESSES processes (``jax.distributed`` with the
coordinator on 127.0.0.1:PORT when there are several). Streams a train and an eval epoch of the
fake imagenet2012 in DATA_DIR over the global mesh and checks that every shard this process
holds equals the same rows of the whole batch read by one process alone; exits 0 if so.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

DEVICES = 8
BATCH = 8


def check(data_dir: str) -> None:
    """Global streamed batches agree shard by shard with the single-reader host batches."""
    import jax

    from ap_jax import parallel, stream

    mesh, key = parallel.make_mesh(), jax.random.key(5)
    for split_name, train in (("train", True), ("validation", False)):
        split = stream.open_split("imagenet2012", split_name, data_dir, cache_dir=tempfile.mkdtemp())
        plan = stream.epoch_plan(len(split), BATCH, key, 1, train)
        augment_key = stream.epoch_keys(key, 1)[1] if train else None
        want = list(stream.host_batches(split, plan, train=train, augment_key=augment_key, size=16))
        got = list(stream.stream(split, BATCH, key, 1, train=train, mesh=mesh, size=16))
        assert len(got) == len(want) > 0, (len(got), len(want))
        for global_batch, whole in zip(got, want):
            for array, expected in zip(global_batch, whole):
                assert array.shape == expected.shape, (array.shape, expected.shape)
                for shard in array.addressable_shards:
                    np.testing.assert_array_equal(np.asarray(shard.data), expected[shard.index])


def main() -> int:
    data_dir, processes, process_id, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES // processes}"
    import jax

    from ap_jax import parallel

    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        parallel.initialize(f"127.0.0.1:{port}", processes, process_id)
    assert jax.device_count() == DEVICES
    check(data_dir)
    if processes > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
