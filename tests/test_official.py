"""Official-code parity switches (ap_jax.official) against independent references.

References: a numpy transcription of the official prune loops (``resnet_20.py:297-390``, run on
a PyTorch-ordered parameter list), the official LR loop (``:241-247``) stepped in Python floats,
the Xavier-normal std ``sqrt(2 / (fan_in + fan_out))``, paper.md's ResNet-20 pool sizes, and
PyTorch's SGD update for the momentum revival (paper.md §5.10).
"""

import ast
import importlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ap_jax import ap, checkpoint, cycle, data, masks, models, official, records, train
from ap_jax.config import RunConfig

SWITCHES = {"init": "xavier", "lr_schedule": "official", "mask_bn_scale": True, "prune_rule": "official",
            "duplicated_pool": True, "reinit": True, "reapply_mask": False}


def test_existing_hashes_are_unchanged_and_each_switch_changes_the_hash():
    assert RunConfig().hash8() == "a4910681"  # both computed on main before the switches existed
    assert RunConfig(model="mlp", ap_rate=0.02, cycles=20, epochs=5, lr=0.02, augment=False).hash8() == "6afedc3e"
    needs = {"duplicated_pool": {"prune_rule": "official"}}
    hashes = {RunConfig(**{name: value, **needs.get(name, {})}).hash8() for name, value in SWITCHES.items()}
    assert len(hashes) == len(SWITCHES) and RunConfig().hash8() not in hashes


def test_preset_turns_every_switch_on_and_keeps_the_scale():
    cfg = official.preset(RunConfig(model="resnet20", epochs=3, cycles=4, seed=7), warmup_steps=90)
    assert {k: getattr(cfg, k) for k in SWITCHES} == SWITCHES
    assert (cfg.weight_decay, cfg.decay_all, cfg.lr, cfg.warmup_steps) == (5e-4, True, 0.1, 90)
    assert (cfg.model, cfg.epochs, cfg.cycles, cfg.seed) == ("resnet20", 3, 4, 7)


@pytest.mark.parametrize("values, message", [
    ({"duplicated_pool": True}, "--duplicated-pool needs --prune-rule official"),
    ({"prune_rule": "official", "scope": "layerwise"}, "--prune-rule official prunes globally"),
    ({"reinit": True, "method": "lrr"}, "--reinit needs --method lth"),
])
def test_inconsistent_switches_are_one_line_errors(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**values)


# ---- the official prune loops, transcribed -------------------------------------------------

def official_loops(named, prev, percent, percent_ap, duplicate):
    """resnet_20.py's prune_by_percentile_lt then prune_by_percentile_ap on ``[(name, tensor)]``
    in named_parameters order; ``duplicate=False`` moves the hstack inside the ``if``."""
    tensors = {n: t.copy() for n, t in named}
    mask = [np.where(t != 0, 1.0, 0.0) for n, t in named if "weight" in n]
    all_weights = []
    for name, _ in named:
        if "weight" in name:
            tensor = tensors[name]
            alive = np.reshape(tensor[np.nonzero(tensor)], (1, -1))
        if duplicate or "weight" in name:
            all_weights = alive if len(all_weights) == 0 else np.hstack((all_weights, alive))
    percentile_value = np.percentile(abs(all_weights.flatten()), percent)
    step = 0
    for name, _ in named:
        if "weight" in name:
            new_mask = np.where(abs(tensors[name]) < percentile_value, 0, mask[step])
            tensors[name] = tensors[name] * new_mask
            mask[step] = new_mask
            step += 1
    num_ap = int(len(all_weights.flatten()) * (percent_ap / 100))
    curr, before = [], []
    for name, _ in named:
        if "weight" in name:
            tensor = tensors[name]
            alive = np.reshape(tensor[np.nonzero(tensor)], (1, -1))
            prev_alive = np.reshape(prev[name][np.nonzero(tensor)], (1, -1))
        if duplicate or "weight" in name:
            if len(curr) == 0:
                curr, before = alive, prev_alive
            else:
                curr, before = np.hstack((curr, alive)), np.hstack((before, prev_alive))
    curr, before = curr.flatten(), before.flatten()
    locations = np.where(curr < 0)
    percentile_value = np.sort(abs(curr[locations] - before[locations]))[num_ap]
    step = 0
    for name, _ in named:
        if "weight" in name:
            tensor = tensors[name]
            mask[step] = np.where((abs(tensor - prev[name]) <= percentile_value) & (tensor < 0), 0, mask[step])
            step += 1
    return mask


TORCH_ORDER = [("conv1.weight", (3, 3, 2, 6)), ("bn1.weight", (6,)), ("bn1.bias", (6,)),
               ("conv2.weight", (3, 3, 6, 6)), ("bn2.weight", (6,)), ("bn2.bias", (6,)),
               ("fc.weight", (6, 5)), ("fc.bias", (5,))]
FLAX_LEAF = {"weight": "kernel", "bias": "bias"}


def flax_path(name):
    module, leaf = name.split(".")
    return module, ("scale" if module.startswith("bn") and leaf == "weight" else FLAX_LEAF[leaf])


def to_flax(named):
    tree = {}
    for name, value in named:
        module, leaf = flax_path(name)
        tree.setdefault(module, {})[leaf] = jnp.asarray(value, jnp.float32)
    return tree  # jax flattens it in sorted order: bn1, bn2, conv1, conv2, fc (not PyTorch's)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("duplicate", [True, False])
def test_threshold_prune_matches_the_official_loops(seed, duplicate):
    rng = np.random.default_rng(seed)
    trained = [(n, (rng.normal(size=s) * rng.random(size=s).__gt__(0.15)).round(1).astype(np.float32))
               for n, s in TORCH_ORDER]
    prev = {n: rng.normal(size=s).round(1).astype(np.float32) for n, s in TORCH_ORDER}
    want = official_loops(trained, prev, 18, 2, duplicate)
    params, ref = to_flax(trained), to_flax(list(prev.items()))
    weights = official.pytorch_weights(params)
    mask = jax.tree_util.tree_map(lambda w, is_weight: w != 0 if is_weight else jnp.ones_like(w, bool),
                                  params, weights)
    got = official.threshold_prune(mask, params, ref, 0.2, 0.02, mask_bn_scale=True,
                                   duplicated_pool=duplicate).mask
    weights = [n for n, _ in TORCH_ORDER if "weight" in n]
    for name, expected in zip(weights, want):
        module, leaf = flax_path(name)
        assert np.array_equal(np.asarray(got[module][leaf]), expected.astype(bool)), name
    assert all(bool(jnp.all(got[m]["bias"])) for m in ("bn1", "bn2", "fc"))


def test_resnet20_pool_sizes_are_paper_md_counts():
    """paper.md §5.8: 271 680 conv/fc weights + BN scales, 273 104 with the official duplicates."""
    shapes = jax.eval_shape(lambda: models.get("resnet20").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    params = shapes["params"]
    sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(params)]
    prunable = official.prunable_flags(params, mask_bn_scale=True)
    assert sum(sizes[i] for i in official.pool_sources(params, prunable, duplicated=False)) == 271_680
    assert sum(sizes[i] for i in official.pool_sources(params, prunable, duplicated=True)) == 273_104


def test_mlp_pool_holds_every_kernel_twice():
    params = {"dense0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
              "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    flags = official.prunable_flags(params, mask_bn_scale=True)
    assert official.pool_sources(params, flags, duplicated=True) == [1, 1, 3, 3]  # bias sorts first


def test_short_ap_supply_prunes_every_candidate_with_a_warning_and_zero_rate_skips_ap():
    params = {"d": {"kernel": jnp.asarray([[1.0, 2.0, 3.0, -4.0, 5.0]] * 2)}}
    ref = {"d": {"kernel": jnp.zeros((2, 5))}}
    mask = {"d": {"kernel": jnp.ones((2, 5), bool)}}
    with pytest.warns(UserWarning, match="AP needs 5 candidate"):
        got = official.threshold_prune(mask, params, ref, 0.6, 0.4, duplicated_pool=False).mask
    # X: |w| < percentile 20 of 1,1,2,2,..,5,5 (= 1.8) removes the 1s; AP: k = 4, only two -4s exist
    assert np.array_equal(np.asarray(got["d"]["kernel"][0]), [False, True, True, False, True])
    alone = official.threshold_prune(mask, params, ref, 0.6, 0.0, duplicated_pool=False).mask
    # X alone: percentile 60 (= 3.4) removes 1, 2, 3
    assert np.array_equal(np.asarray(alone["d"]["kernel"][0]), [False, False, False, True, True])


# ---- BN scales in the mask ----------------------------------------------------------------

def test_paper_rule_with_mask_bn_scale_prunes_scales_as_numpy_exact_count():
    rng = np.random.default_rng(0)
    params = {"bn": {"scale": jnp.asarray(rng.normal(size=8), jnp.float32), "bias": jnp.zeros(8)},
              "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)}}
    mask = masks.init(params)
    got = official.ap_prune_with_scales(mask, params, params, rate=0.25, ap_rate=0.0).mask
    pool = np.concatenate([np.abs(params["bn"]["scale"]), np.abs(params["conv"]["kernel"]).ravel()])
    cut = np.sort(pool)[round(0.25 * pool.size) - 1]
    assert np.array_equal(np.asarray(got["bn"]["scale"]), np.abs(params["bn"]["scale"]) > cut)
    assert np.array_equal(np.asarray(got["conv"]["kernel"]), np.abs(params["conv"]["kernel"]) > cut)
    assert not np.all(np.asarray(got["bn"]["scale"])) and bool(jnp.all(got["bn"]["bias"]))
    assert bool(jnp.all(ap.ap_prune(mask, params, params, rate=0.25, ap_rate=0.0)["bn"]["scale"]))


# ---- Xavier-normal init ---------------------------------------------------------------------

def test_xavier_init_has_pytorch_xavier_normal_statistics():
    params = {"Dense_0": {"kernel": jnp.zeros((2000, 1000)), "bias": jnp.zeros(20000)},
              "Conv_0": {"kernel": jnp.zeros((3, 3, 64, 128))},
              "BatchNorm_0": {"scale": jnp.zeros(20000), "bias": jnp.ones(20000)},
              "embedding": jnp.full((3,), 7.0)}
    out = official.xavier_init(params, jax.random.key(0))
    dense, conv = np.asarray(out["Dense_0"]["kernel"]), np.asarray(out["Conv_0"]["kernel"])
    std = np.sqrt(2 / (2000 + 1000))
    assert abs(dense.std() / std - 1) < 0.01 and abs(dense.mean()) < 0.01 * std
    assert np.abs(dense).max() > 4 * std  # a plain normal, not Flax's glorot truncated at 2 std
    assert abs(conv.std() / np.sqrt(2 / (9 * 64 + 9 * 128)) - 1) < 0.02
    scale = np.asarray(out["BatchNorm_0"]["scale"])
    assert abs(scale.mean() - 1) < 0.001 and abs(scale.std() / 0.02 - 1) < 0.03
    assert np.all(np.asarray(out["BatchNorm_0"]["bias"]) == 0)
    bias = np.asarray(out["Dense_0"]["bias"])
    assert abs(bias.std() - 1) < 0.03 and abs(bias.mean()) < 0.03
    assert np.all(np.asarray(out["embedding"]) == 7.0)


# ---- the official LR schedule ---------------------------------------------------------------

def official_lrs(steps_per_epoch, epochs, set_lr=0.1, warmup=20000):
    """resnet_20.py's train(): curr_lr += slope while iteration_num <= 20000, then epoch overrides."""
    slope, curr_lr, iteration_num, lrs = set_lr / warmup, 0.0, 0, []
    for iter_ in range(epochs):
        for _ in range(steps_per_epoch):
            iteration_num += 1
            if iteration_num <= warmup:
                curr_lr = curr_lr + slope
            if iter_ >= 25:
                curr_lr = set_lr / 10
            if iter_ >= 32:
                curr_lr = set_lr / 100
            lrs.append(curr_lr)
    return np.asarray(lrs)


@pytest.mark.parametrize("steps_per_epoch", [782, 1000])  # warm-up cut short at epoch 25 / finished
def test_official_lr_schedule_matches_the_official_loop(steps_per_epoch):
    cfg = train.OptimConfig(lr=0.1, warmup_steps=20000, lr_drops=(0.5, 0.64))
    total = 50 * steps_per_epoch
    schedule = official.lr_schedule(cfg, total, steps_per_epoch)
    got = np.asarray(jax.vmap(schedule)(jnp.arange(total)))
    np.testing.assert_allclose(got, official_lrs(steps_per_epoch, 50), rtol=1e-5)


def test_official_lr_schedule_hand_values():
    cfg = train.OptimConfig(lr=0.1, warmup_steps=20000, lr_drops=(0.5, 0.64))
    schedule = official.lr_schedule(cfg, 50 * 782, 782)
    for step, lr in [(0, 5e-6), (19549, 0.09775), (19550, 0.01), (25023, 0.01), (25024, 0.001)]:
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-5), step
    with pytest.raises(ValueError, match="whole epochs"):
        official.lr_schedule(cfg, 100, 0)


# ---- no mask re-application: the momentum leak ------------------------------------------------

@pytest.mark.parametrize("reapply", [True, False])
def test_carried_momentum_revives_pruned_weights_only_without_reapplication(reapply):
    model = models.get("mlp", num_classes=3, features=(4,))
    params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))["params"]
    mask = jax.tree_util.tree_map(lambda p: jnp.arange(p.size).reshape(p.shape) % 3 != 0 if p.ndim == 2
                                  else jnp.ones(p.shape, bool), params)
    cfg = train.OptimConfig(lr=0.1, weight_decay=5e-4, decay_all=True, warmup_steps=4,
                            lr_drops=())
    tx = train.optimizer(cfg, official.lr_schedule(cfg, 8, 4), params)
    buf = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 0.5), params)
    before = optax.tree_utils.tree_set(tx.init(params), trace=buf, count=jnp.asarray(7, jnp.int32))
    state = train.fresh_state(params, {}, mask, tx, official.carried_momentum(before))
    assert int(optax.tree_utils.tree_get(state.opt_state, "count")) == 0
    make_steps = official.step_factory(RunConfig(reapply_mask=reapply))
    steps = make_steps(model, tx, (0.5,) * 3, (0.25,) * 3, augment=False)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 2, 2, 3)), jnp.uint8)
    new, _ = steps.train(state, images, jnp.asarray([0, 1, 2, 0]), jnp.arange(4), jax.random.key(1))
    pruned = np.asarray(new.params["dense0"]["kernel"])[~np.asarray(mask["dense0"]["kernel"])]
    # torch SGD on a weight at 0 with its gradient zeroed: buf = 0.9 * 0.5 + 0 (+ wd * 0), w -= lr * buf
    expected = 0.0 if reapply else -(0.1 / 4) * 0.9 * 0.5
    np.testing.assert_allclose(pruned, expected, rtol=1e-6)


# ---- the full preset: a tiny run that completes and resumes bitwise ---------------------------

def tiny_preset():
    base = RunConfig(model="mlp", cycles=2, epochs=2, batch_size=40, dnr_size=60, eval_batch_size=64, seed=3)
    return official.preset(base, warmup_steps=4, augment=False)


def strip_wall(rows):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def stop_on_call(n, original):
    calls = []

    def stopper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    return stopper


@pytest.fixture(scope="module")
def preset_run(fake_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("official") / "run"
    rows = cycle.run(tiny_preset(), data.load("cifar10", fake_data), run_dir)
    return run_dir, rows


def test_preset_run_reinits_and_revives_pruned_weights(preset_run):
    run_dir, rows = preset_run
    assert [r["cycle"] for r in records.cycle_rows(rows)] == [0, 1, 2]
    first, second = checkpoint.read_cycle(run_dir, 0), checkpoint.read_cycle(run_dir, 1)
    mask = second["mask"]
    start0, start1 = first["start"]["params"], second["start"]["params"]
    kernel = np.asarray(mask["dense0"]["kernel"])
    assert 0.75 < kernel.mean() < 0.82  # about 20 % pruned (k+1 rule, duplicated pool)
    alive0, alive1 = (np.asarray(s["dense0"]["kernel"])[kernel] for s in (start0, start1))
    assert not np.allclose(alive0, alive1)  # reinit: not theta_0 rewound
    assert np.all(np.asarray(start1["dense0"]["kernel"])[~kernel] == 0)
    revived = np.asarray(second["end"]["params"]["dense0"]["kernel"])[~kernel]
    assert np.mean(revived != 0) > 0.99  # momentum carried across the prune revives them


def test_preset_run_resumes_bitwise(preset_run, fake_data, tmp_path, monkeypatch):
    ref_dir, ref_rows = preset_run
    dataset, run_dir = data.load("cifar10", fake_data), tmp_path / "run"
    for target, name, nth in [(cycle._Run, "train_epoch", 4), (cycle, "prune_step", 1)]:
        with monkeypatch.context() as patch:  # cycle 1 epoch 1; then the prune after cycle 1
            patch.setattr(target, name, stop_on_call(nth, getattr(target, name)))
            with pytest.raises(KeyboardInterrupt):
                cycle.run(tiny_preset(), dataset, run_dir)
    assert strip_wall(cycle.run(tiny_preset(), dataset, run_dir)) == strip_wall(ref_rows)
    for c in range(3):
        got, want = checkpoint.read_cycle(run_dir, c), checkpoint.read_cycle(ref_dir, c)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
            assert a.dtype == b.dtype and np.array_equal(a, b), f"cycle {c} {path}"


# ---- one seam -------------------------------------------------------------------------------

def test_no_core_module_tests_an_official_switch():
    """masks, prune, ap, train and the driver read no official switch of a config: they ask
    ap_jax.official (prune_function, step_factory, schedule_function, reset_rule, ...)."""
    def reads_of_switches(module):
        tree = ast.parse(inspect.getsource(importlib.import_module(f"ap_jax.{module}")))
        reads = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in SWITCHES
                 and (getattr(node.value, "id", None) == "cfg" or getattr(node.value, "attr", None) == "cfg")]
        return reads + [node.arg for node in ast.walk(tree) if isinstance(node, ast.arg) and node.arg in SWITCHES]

    assert set(reads_of_switches("official")) == set(SWITCHES)  # the seam does read every switch
    for module in ("masks", "prune", "ap", "train", "cycle", "trainers", "measure", "run_dir"):
        assert reads_of_switches(module) == [], module
