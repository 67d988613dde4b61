"""``--download``: tfds prepares CIFAR as ArrayRecord into the resolved data dir, or a one-line error.

The network and TensorFlow are replaced by a stand-in ``tfds.builder`` whose
``download_and_prepare`` writes the fake dataset, so the wiring (CLI flag -> fetch -> tfds ->
data.load) runs here as on a fresh machine.
"""

import pytest
import tensorflow_datasets as tfds
from fake_tfds import write_fake_cifar

from ap_jax import data, fetch
from experiments import compare_ap

TINY = ["--model", "mlp", "--cycles", "1", "--epochs", "1", "--batch-size", "40", "--dnr-size", "60",
        "--eval-batch-size", "64", "--train-size", "100"]


class StandInBuilder:
    """Records how tfds was asked to build, and writes the fake CIFAR-10 (or fails) when asked."""

    calls: list = []

    def __init__(self, name, data_dir, file_format, fail=None):
        self.name, self.data_dir, self.file_format, self.fail = name, data_dir, file_format, fail

    def download_and_prepare(self):
        StandInBuilder.calls.append((self.name, self.data_dir, self.file_format))
        if self.fail:
            raise self.fail
        write_fake_cifar(self.data_dir, train_per_class=12, test_per_class=5)


@pytest.fixture
def stand_in(monkeypatch):
    StandInBuilder.calls = []
    monkeypatch.setattr(fetch, "NEEDS", ())  # TensorFlow is not installed here
    monkeypatch.setattr(tfds, "builder",
                        lambda name, data_dir, file_format: StandInBuilder(name, data_dir, file_format))
    return StandInBuilder


def run(capsys, *argv):
    try:
        code = compare_ap.main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err.strip().splitlines()


def test_download_prepares_array_record_in_the_data_dir_then_trains(stand_in, tmp_path, capsys):
    code, _ = run(capsys, *TINY, "--data-dir", tmp_path / "fresh", "--out", tmp_path / "o", "--download")
    assert code == 0
    assert stand_in.calls == [("cifar10:3.0.2", tmp_path / "fresh", "array_record")]
    assert (tmp_path / "fresh" / "cifar10" / "3.0.2" / "dataset_info.json").is_file()
    assert fetch.prepare("cifar10", tmp_path / "fresh") == tmp_path / "fresh" / "cifar10" / "3.0.2"
    assert len(stand_in.calls) == 1  # prepared data is not fetched again


def test_download_goes_to_the_resolved_data_dir(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    fetch.prepare("cifar10")
    assert stand_in.calls == [("cifar10:3.0.2", tmp_path / "env", "array_record")]


def test_a_failed_download_is_a_one_line_exit_2(stand_in, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir, file_format: StandInBuilder(
        name, data_dir, file_format, fail=ConnectionError("Failed to resolve\n'www.cs.toronto.edu'")))
    code, err = run(capsys, *TINY, "--data-dir", tmp_path / "fresh", "--out", tmp_path / "o", "--download")
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert "could not download and prepare CIFAR-10 into" in err[-1]
    assert "ConnectionError: Failed to resolve 'www.cs.toronto.edu'" in err[-1]
    assert not (tmp_path / "o").exists()


def test_missing_tensorflow_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fetch, "NEEDS", ("tensorflow_is_not_installed_here",))
    code, err = run(capsys, *TINY, "--data-dir", tmp_path / "fresh", "--out", tmp_path / "o", "--download")
    assert code == 2
    assert "--download needs tensorflow_is_not_installed_here" in err[-1] and 'pip install -e ".[download]"' in err[-1]


def test_imagenet_cannot_be_downloaded():
    with pytest.raises(data.DataError, match="needs a manual download"):
        fetch.prepare_if_asked(compare_ap.build_parser().parse_args(["--download"]), ["imagenet200"])
