"""Shared fixtures: one tiny CIFAR-10 in the real tfds on-disk format for the whole session.

Compiled programs are cached on disk for the session (this process only; subprocess tests
compile their own), so the many runs here that compile the same train step, such as the X and
X+AP arms of one experiment, compile it once: about 3x faster for the experiment tests.
"""

import atexit
import shutil
import signal
import tempfile

import jax
import pytest

_CACHE = tempfile.mkdtemp(prefix="ap_jax_test_jit_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# The Ctrl-C tests send SIGINT to this process; a shell that started the suite in the background
# leaves SIGINT ignored, so put Python's own handler back.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory):
    """A TFDS data dir with a 120-image train and 50-image test split of fake CIFAR-10."""
    from fake_tfds import write_fake_cifar  # imports tfds: only the tests that need data pay for it

    data_dir = tmp_path_factory.mktemp("tfds")
    write_fake_cifar(data_dir, train_per_class=12, test_per_class=5)
    return data_dir
