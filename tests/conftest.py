"""Shared fixtures: one tiny CIFAR-10 in the real tfds on-disk format for the whole session."""

import pytest


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory):
    """A TFDS data dir with a 120-image train and 50-image test split of fake CIFAR-10."""
    from fake_tfds import write_fake_cifar  # imports tfds: only the tests that need data pay for it

    data_dir = tmp_path_factory.mktemp("tfds")
    write_fake_cifar(data_dir, train_per_class=12, test_per_class=5)
    return data_dir
