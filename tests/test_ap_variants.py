"""AP ablation/substitution variants, ``ap_start_cycle`` and the config fields, vs numpy references.

Every variant's selection is checked against a numpy Algorithm 2 step written here (magnitude for
``rate - ap_rate``, then the variant's candidates, lowest score first, index order on ties).
"""

import argparse
import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ap_jax import ap, config, cycle, masks, official, prune, scores
from ap_jax.config import RunConfig

SHAPES = {"conv": (3, 4), "bias": (5,), "block": (2, 3, 2, 2), "dense": (7, 2)}
VARIANTS = tuple(ap.AP_VARIANTS)


def random_trees(rng: np.random.Generator):
    """Mask, trained and start params: prunable (ndim >= 2) and fixed leaves, values with ties and zeros."""
    def mask_leaf(shape):
        return jnp.asarray(rng.random(shape) < 0.8 if len(shape) >= 2 else np.ones(shape, bool))

    def param_leaf(shape):
        return jnp.asarray(rng.normal(size=shape).round(1), jnp.float32)

    return tuple({k: make(s) for k, s in SHAPES.items()} for make in (mask_leaf, param_leaf, param_leaf))


def np_variant_scores(variant, w, r, u):
    """Numpy AP scores of one flat leaf; ``u`` are the uniform draws of the random variant."""
    change = np.abs(w - r)
    table = {
        "ap": np.where(w < 0, change, np.inf),
        "negative_magnitude": np.where(w < 0, np.abs(w), np.inf),
        "negative_random": np.where(w < 0, u, np.inf),
        "change_all_signs": change,
        "positive_change": np.where(w > 0, change, np.inf),
    }
    return table[variant]


def np_take(alive, score, k):
    """Prune the ``k`` alive finite lowest scores (stable: lower index first); returns the new alive."""
    idx = np.flatnonzero(alive & np.isfinite(score))
    order = idx[np.lexsort((idx, score[idx]))]
    out = alive.copy()
    out[order[:k]] = False
    return out


def np_count(fraction, alive):
    return int(np.round(np.float32(fraction) * np.float32(alive)))


def np_step(mask, params, ref, rate, ap_rate, scope, variant, key):
    """Numpy X-then-AP step over the prunable leaves; returns the new prunable mask leaves."""
    names = [k for k in sorted(SHAPES) if len(SHAPES[k]) >= 2]  # tree-flatten order
    m = [np.asarray(mask[k]).ravel() for k in names]
    w = [np.asarray(params[k]).ravel() for k in names]
    r = [np.asarray(ref[k]).ravel() for k in names]
    leaf_index = {k: i for i, k in enumerate(sorted(SHAPES))}
    u = [np.asarray(jax.random.uniform(jax.random.fold_in(key, leaf_index[k]), SHAPES[k])).ravel() for k in names]
    groups = [list(range(len(names)))] if scope == "global" else [[i] for i in range(len(names))]
    new = list(m)
    for group in groups:
        cat = lambda xs: np.concatenate([xs[i] for i in group])  # noqa: E731
        alive = cat(m)
        after = np_take(alive, np.abs(cat(w)), np_count(rate - ap_rate, alive.sum()))
        after = np_take(after, np_variant_scores(variant, cat(w), cat(r), cat(u)), np_count(ap_rate, alive.sum()))
        cuts = np.cumsum([0] + [m[i].size for i in group])
        for j, i in enumerate(group):
            new[i] = after[cuts[j]:cuts[j + 1]]
    return [x.reshape(SHAPES[k]) for x, k in zip(new, names)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("jit", [False, True])
def test_variant_selection_matches_numpy(variant, scope, jit):
    fn = jax.jit(ap.ap_prune, static_argnames=("scope", "variant")) if jit else ap.ap_prune
    for seed in range(6):
        rng = np.random.default_rng(200 + seed)
        mask, params, ref = random_trees(rng)
        key = jax.random.key(seed)
        for rate, ap_rate in [(0.2, 0.02), (0.5, 0.3), (0.3, 0.3)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new = fn(mask, params, ref, rate=rate, ap_rate=ap_rate, scope=scope, variant=variant, key=key)
            want = np_step(mask, params, ref, rate, ap_rate, scope, variant, key)
            got = [np.asarray(x) for _, x in masks.prunable_leaves(new)]
            for g, e in zip(got, want):
                np.testing.assert_array_equal(g, e)
            np.testing.assert_array_equal(new["bias"], True)


W = {"k": jnp.array([[-0.5, -0.2], [-0.9, 0.3], [0.8, 0.1]])}
W0 = {"k": W["k"] - jnp.array([[0.05, -0.4], [0.3, 0.01], [-0.6, 0.2]])}


@pytest.mark.parametrize("variant,pruned", [
    ("ap", [0, 2, 5]),                  # negatives {0, 1, 2} by |dW| 0.05, 0.4, 0.3
    ("negative_magnitude", [0, 1, 5]),  # negatives by |w| 0.5, 0.2, 0.9
    ("change_all_signs", [0, 3, 5]),    # every alive weight by |dW|: 0.01 (3), then 0.05 (0)
    ("positive_change", [3, 4, 5]),     # alive positives {3, 4} (0.1 went to magnitude)
])
def test_six_weights_hand_worked(variant, pruned):
    """rate 0.5, ap_rate 1/3 (N = 6): magnitude takes round(1.0) = 1, the smallest |w| 0.1 (index 5);
    each variant then takes round(2.0) = 2 of its candidates, a different pair for each."""
    new = ap.ap_prune(masks.init(W), W, W0, rate=0.5, ap_rate=1 / 3, variant=variant)
    np.testing.assert_array_equal(np.flatnonzero(~np.asarray(new["k"]).ravel()), pruned)


def test_prune_record_of_the_six_weights_hand_worked():
    """The weights above and a positive leaf "j", N = 8: magnitude's round(0.25 N) = 2 take |w| 0.1
    and 0.2 (indices 5 and 1 of "k"), AP's budget of 2 the alive negatives left, 0 and 2. Then a
    short supply: rate 0.9, ap_rate 0.8 of N = 6 ask AP for round(4.8) = 5 negatives after
    magnitude's round(0.6) = 1, and three exist."""
    params, ref = {**W, "j": jnp.ones((1, 2))}, {**W0, "j": jnp.ones((1, 2))}
    mask = masks.init(params)
    result = ap.ap_prune_result(mask, params, ref, rate=0.5, ap_rate=2 / 8)
    assert ap.prune_record(mask, result) == {"x_pruned": 2, "ap_budget": 2, "ap_pruned": 2, "ap_shortfall": 0,
                                             "ap_pruned_per_layer": {"j": 0, "k": 2}}
    with pytest.warns(UserWarning, match="only 3 alive negative"):
        short = ap.ap_prune_result(masks.init(W), W, W0, rate=0.9, ap_rate=0.8)
    assert ap.prune_record(masks.init(W), short) == {"x_pruned": 1, "ap_budget": 5, "ap_pruned": 3,
                                                     "ap_shortfall": 2, "ap_pruned_per_layer": {"k": 3}}


def test_random_variant_takes_negatives_only_and_depends_on_key_alone():
    picks = set()
    for seed in range(20):
        key = jax.random.key(seed)
        new = ap.ap_prune(masks.init(W), W, W0, rate=0.5, ap_rate=1 / 3, variant="negative_random", key=key)
        again = ap.ap_prune(masks.init(W), W, W0, rate=0.5, ap_rate=1 / 3, variant="negative_random", key=key)
        np.testing.assert_array_equal(new["k"], again["k"])
        pruned = tuple(np.flatnonzero(~np.asarray(new["k"]).ravel()))
        assert 5 in pruned and len(pruned) == 3 and set(pruned) - {5} <= {0, 1, 2}
        picks.add(pruned)
    assert len(picks) == 3  # every pair of the three negatives comes up


def test_default_variant_is_the_existing_ap():
    rng = np.random.default_rng(5)
    mask, params, ref = random_trees(rng)
    for a, b in zip(jax.tree_util.tree_leaves(ap.variant_scores("ap", params, ref)),
                    jax.tree_util.tree_leaves(ap.ap_scores(params, ref))):
        np.testing.assert_array_equal(a, b)
    for scope in ("global", "layerwise"):
        base = ap.ap_prune(mask, params, ref, rate=0.4, ap_rate=0.1, scope=scope)
        named = ap.ap_prune(mask, params, ref, rate=0.4, ap_rate=0.1, scope=scope, variant="ap",
                            key=jax.random.key(1))
        for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(named)):
            np.testing.assert_array_equal(a, b)


def test_bad_variant_missing_key_and_short_supply():
    with pytest.raises(ValueError, match="AP variant must be one of"):
        ap.ap_prune(masks.init(W), W, W0, variant="negative")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        ap.ap_prune(masks.init(W), W, W0, variant="negative_random")
    with pytest.warns(UserWarning, match="only 2 alive positive"):
        ap.ap_prune(masks.init(W), W, W0, rate=0.9, ap_rate=0.8, variant="positive_change")


def test_prune_step_before_ap_start_cycle_is_magnitude_for_the_whole_rate():
    rng = np.random.default_rng(9)
    mask, params, ref = random_trees(rng)
    cfg = RunConfig(rate=0.3, ap_rate=0.1, cycles=4, ap_start_cycle=2)
    magnitude = prune.prune(mask, scores.magnitude(params), 0.3)
    with_ap = ap.ap_prune(mask, params, ref, rate=0.3, ap_rate=0.1)
    assert any(np.any(a != b) for a, b in zip(jax.tree_util.tree_leaves(magnitude),
                                              jax.tree_util.tree_leaves(with_ap)))
    for c, expected in [(0, magnitude), (1, magnitude), (2, with_ap), (3, with_ap)]:
        got = cycle.prune_step(cfg, mask, params, ref, c).mask
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_array_equal(a, b)


def test_prune_step_random_variant_is_deterministic_per_seed_and_cycle():
    rng = np.random.default_rng(11)
    mask, params, ref = random_trees(rng)
    cfg = RunConfig(rate=0.3, ap_rate=0.2, cycles=4, ap_variant="negative_random")

    def pruned(cfg, c):
        return np.concatenate([np.asarray(x).ravel() for _, x in masks.prunable_leaves(
            cycle.prune_step(cfg, mask, params, ref, c).mask)])

    np.testing.assert_array_equal(pruned(cfg, 1), pruned(cfg, 1))
    assert np.any(pruned(cfg, 1) != pruned(cfg, 2))
    assert np.any(pruned(cfg, 1) != pruned(dataclasses.replace(cfg, seed=1), 1))


@pytest.mark.parametrize("fields,message", [
    ({"ap_variant": "bogus"}, "--ap-variant must be one of ap, negative_magnitude, negative_random, "
                              "change_all_signs, positive_change, got 'bogus'"),
    ({"ap_start_cycle": -1}, "--ap-start-cycle must be at least 0, got -1"),
    ({"ap_start_cycle": 5}, "--ap-start-cycle must be in [0, --cycles), got 5 with --cycles 5"),
])
def test_config_validation(fields, message):
    with pytest.raises(ValueError) as err:
        RunConfig(**fields)
    assert str(err.value) == message


def test_cli_flags_and_choices(capsys):
    parser = argparse.ArgumentParser()
    config.add_config_args(parser, RunConfig())
    args = parser.parse_args(["--ap-variant", "positive_change", "--ap-start-cycle", "2"])
    cfg = config.config_from_args(parser, args)
    assert (cfg.ap_variant, cfg.ap_start_cycle) == ("positive_change", 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["--ap-variant", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_hash_unchanged_at_defaults_and_old_config_json_reads_as_defaults():
    cfg = RunConfig(model="mlp", ap_rate=0.02, cycles=20, epochs=5, lr=0.02, augment=False)
    assert cfg.hash8() == "6afedc3e"  # results/compare_ap-6afedc3e, hashed before the new fields
    others = {dataclasses.replace(cfg, ap_variant=v).hash8() for v in VARIANTS[1:]}
    others.add(dataclasses.replace(cfg, ap_start_cycle=1).hash8())
    assert len(others) == len(VARIANTS) and cfg.hash8() not in others
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("ap_variant", "ap_start_cycle")}
    assert config.from_dict(old) == cfg
    assert config.differences(old, cfg) == []
    assert config.differences(old, dataclasses.replace(cfg, ap_variant="change_all_signs")) == [
        "--ap-variant 'ap' vs 'change_all_signs'"]
    assert config.differences(cfg.to_dict(), cfg) == []


def test_ap_takes_negative_bn_scales_when_they_are_prunable():
    # Official-code setting (mask_bn_scale): gamma joins the pool as a (C, 1) kernel, before the
    # conv kernel in tree order ("bn" < "conv"). Scales barely moved, the kernel moved by 0.3.
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(2, 2, 1, 3)).astype(np.float32)
    scale = np.array([-0.5, 0.9, -0.7], np.float32)
    zeros = np.zeros(3, np.float32)
    params = {"bn": {"bias": zeros, "scale": scale}, "conv": {"bias": zeros, "kernel": kernel}}
    ref = {"bn": {"bias": zeros, "scale": scale - np.float32([0.01, 0.02, 0.03])},
           "conv": {"bias": zeros, "kernel": kernel + np.float32(0.3)}}
    got = official.ap_prune_with_scales(masks.init(params), params, ref, rate=0.4, ap_rate=0.2).mask

    w = np.concatenate([scale, kernel.ravel()])
    change = np.abs(np.concatenate([scale - ref["bn"]["scale"], kernel.ravel() - ref["conv"]["kernel"].ravel()]))
    alive = np.ones(15, bool)
    alive[np.argsort(np.abs(w), kind="stable")[:3]] = False  # X: round(0.2 * 15) smallest |w|
    negatives = np.flatnonzero(alive & (w < 0))
    alive[negatives[np.argsort(change[negatives], kind="stable")][:3]] = False  # AP: round(0.2 * 15)
    assert not alive[0] and alive[1] and not alive[2]  # both negative scales went to AP
    np.testing.assert_array_equal(got["bn"]["scale"], alive[:3])
    np.testing.assert_array_equal(got["conv"]["kernel"], alive[3:].reshape(kernel.shape))
    assert got["bn"]["bias"].all() and got["conv"]["bias"].all()
