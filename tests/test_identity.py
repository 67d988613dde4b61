"""Config domains and run-directory identity: every field has a domain, every committed study
still hashes to its name, and every committed run holds the config its study gives it."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ap_jax import config, identity
from ap_jax.config import RunConfig
from ap_jax.cycle import RunDirError
from ap_jax.domains import Number
from experiments import compare_ap, paper_table, reproduce, table1

RESULTS = Path(__file__).resolve().parents[1] / "results"
TABLE_SPECS = {"table1": table1.SPEC}


def test_every_field_declares_a_bounded_domain():
    assert config._missing_domains() == []
    for f in dataclasses.fields(RunConfig):
        domain = f.metadata["domain"]
        assert domain.problem(f.default) is None, f.name  # the default is a valid value
        if isinstance(domain, Number):
            assert math.isfinite(domain.high) or domain.kind is float, f.name  # no huge integer
            assert domain.problem(math.nan) is not None and domain.problem(math.inf) is not None, f.name


def test_a_field_without_a_domain_cannot_be_declared():
    with pytest.raises(TypeError):
        config._field(1, "a new setting")  # the domain is a required argument


def test_numbers_are_one_setting_whatever_their_spelling():
    assert RunConfig(lr=1).hash8() == RunConfig(lr=1.0).hash8()
    assert RunConfig(lr_drops=[0.5]).lr_drops == (0.5,)


def test_dnr_size_is_resolved_to_the_subset_before_hashing():
    assert RunConfig(train_size=500).dnr_size == 500
    assert RunConfig(train_size=500, dnr_size=5000).hash8() == RunConfig(train_size=500, dnr_size=500).hash8()
    assert RunConfig(dnr_size=5000).dnr_size == 5000  # the whole split: checked against the data


def committed_studies():
    return sorted([*RESULTS.glob("compare_ap-*"), *(RESULTS / "tables").glob("table*-*-*")])


def test_every_committed_study_hashes_to_its_name():
    studies = committed_studies()
    assert studies
    for study in studies:
        prefix = study.name.rsplit("-", 1)[0]
        stored, cfg = identity.read_study(study, prefix, extra=("scale",))
        assert study.name == identity.study_name(prefix, cfg)
        assert config.differences(stored, cfg) == []  # resolving changed no stored value


def expected_runs(study: Path, cfg: RunConfig) -> dict[Path, RunConfig]:
    """Every run directory a committed study holds, with the config the study gives it."""
    if study.name.startswith("compare_ap-"):
        return {compare_ap.cycle.arm_run_dir(study, label, cfg.seed): arm
                for label, arm in compare_ap.arm_configs(cfg).items()}
    runs = {}
    for run_dir in study.glob("*/*/seed_*"):
        method, folder, seed = run_dir.parent.parent.name, run_dir.parent.name, int(run_dir.name[5:])
        stored = json.loads((run_dir / "config.json").read_text())
        arms = paper_table.arm_configs(cfg, method, seed, stored.get("rewind_step", 0))
        runs[run_dir] = {compare_ap.cycle.arm_folder(a): c for a, c in arms.items()}[folder]
    return runs


def test_every_committed_run_holds_the_config_its_study_gives_it():
    checked = 0
    for study in committed_studies():
        _, cfg = identity.read_study(study, study.name.rsplit("-", 1)[0], extra=("scale",))
        for run_dir, want in expected_runs(study, cfg).items():
            compare_ap.cycle.check_run_dir(run_dir, want)
            checked += 1
    for job in reproduce.present(RESULTS / "reproduce", {}):
        stored = json.loads((job.run_dir(RESULTS / "reproduce") / "config.json").read_text())
        assert config.from_dict(stored) == job.cfg and config.differences(stored, job.cfg) == []
        checked += 1
    assert checked == 4 + 36


def test_a_study_whose_config_was_edited_is_refused(tmp_path):
    cfg = RunConfig(ap_rate=0.02)
    study = tmp_path / identity.study_name("compare_ap", cfg)
    study.mkdir()
    (study / "config.json").write_text(json.dumps({**cfg.to_dict(), "ap_rate": 0.05}))
    with pytest.raises(RunDirError, match=f"hashes to {RunConfig(ap_rate=0.05).hash8()}, not to the directory"):
        identity.read_study(study, "compare_ap")
    run_dir = study / "lth_AP" / "seed_0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run_dir / "metrics.jsonl").write_text("")
    with pytest.raises(RunDirError, match=f"is a run directory .*pass its study directory, {study}"):
        identity.read_study(run_dir, "compare_ap")


def test_every_committed_run_directory_still_resolves_to_its_hash():
    """The hashes were computed by the code that wrote these results; a config change that moves
    one (a renamed field, a new field not marked ``added``) would orphan that run."""
    pinned = json.loads((Path(__file__).parent / "committed_config_hashes.json").read_text())
    assert len(pinned) == 43
    for relative, want in pinned.items():
        stored = json.loads((RESULTS / relative).read_text())
        stored.pop("scale", None)  # a study's config.json also holds its scale preset
        cfg = config.from_dict(stored)
        assert cfg.hash8() == want, relative
        assert config.differences(stored, cfg) == [], relative


def test_optim_config_is_the_run_configs_optimizer_fields():
    cfg = RunConfig(lr=0.05, momentum=0.8, weight_decay=5e-4, decay_all=True, lr_drops=(0.5,), lr_gamma=0.2,
                    warmup_steps=7, lr_schedule="official")
    optim = cfg.optim()
    assert dataclasses.asdict(optim) == {name: getattr(cfg, name) for name in config.OPTIM_FIELDS}
    defaults = dataclasses.asdict(config.OptimConfig())
    assert defaults == {name: getattr(RunConfig(), name) for name in config.OPTIM_FIELDS}


def test_importing_the_config_loads_no_data_pipeline():
    code = ("import sys, ap_jax.config; print(sorted(m for m in sys.modules if m.startswith(('PIL', "
            "'ap_jax.data', 'ap_jax.stream', 'ap_jax.feeds', 'ap_jax.train', 'tensorflow_datasets'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"
