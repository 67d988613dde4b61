"""masks, scores, prune and ap against numpy references written here, jitted and eager."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ap_jax as apj

SHAPES = [(3, 4), (5,), (2, 3, 2, 2), (7, 2), (4,)]


def random_tree(rng: np.random.Generator, kind: str):
    """A nested dict with prunable (ndim >= 2) and fixed leaves; ties and +inf for scores."""
    def leaf(shape):
        if kind == "params":
            return jnp.asarray(rng.normal(size=shape).round(1), jnp.float32)
        if kind == "scores":
            values = rng.integers(0, 4, size=shape).astype(np.float32)
            values[rng.random(shape) < 0.15] = np.inf
            return jnp.asarray(values)
        alive = rng.random(shape) < 0.8 if len(shape) >= 2 else np.ones(shape, bool)
        return jnp.asarray(alive)

    return {
        "conv": {"kernel": leaf(SHAPES[0]), "bias": leaf(SHAPES[1])},
        "block": {"conv": {"kernel": leaf(SHAPES[2])}, "dense": {"kernel": leaf(SHAPES[3])}},
        "bn": {"scale": leaf(SHAPES[4])},
    }


def prunable_np(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree) if np.ndim(x) >= 2]


def np_count(fraction, alive):
    return int(np.round(np.float32(fraction) * np.float32(alive)))


def np_take_lowest(alive, score, k, spare_inf=False):
    """Reference: indices of the k alive entries to prune, finite lowest first, then +inf."""
    idx = np.arange(alive.size)
    finite = idx[alive & np.isfinite(score)]
    finite = finite[np.lexsort((finite, score[finite]))]
    inf = idx[alive & ~np.isfinite(score)]
    order = finite if spare_inf else np.concatenate([finite, inf])
    return order[:k]


def np_prune(mask, scores, fraction, scope, spare_inf=False, counts=None):
    """Numpy prune over the prunable leaves; returns the new prunable mask leaves."""
    m, s = prunable_np(mask), prunable_np(scores)
    if scope == "global":
        alive, score = np.concatenate([x.ravel() for x in m]), np.concatenate([x.ravel() for x in s])
        k = np_count(fraction, alive.sum()) if counts is None else counts
        alive = alive.copy()
        alive[np_take_lowest(alive, score, k, spare_inf)] = False
        cuts = np.cumsum([0] + [x.size for x in m])
        return [alive[cuts[i]:cuts[i + 1]].reshape(x.shape) for i, x in enumerate(m)]
    out = []
    for i, (a, sc) in enumerate(zip(m, s)):
        a = a.ravel().copy()
        k = np_count(fraction, a.sum()) if counts is None else counts[i]
        a[np_take_lowest(a, sc.ravel(), k, spare_inf)] = False
        out.append(a.reshape(m[i].shape))
    return out


def assert_fixed_leaves_alive(new_mask):
    for leaf in jax.tree_util.tree_leaves(new_mask):
        if np.ndim(leaf) < 2:
            assert np.all(np.asarray(leaf))


FRACTIONS = [0.0, 0.01, 0.05, 0.2, 0.5, 0.9, 0.99]


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("jit", [False, True])
def test_prune_matches_numpy(scope, jit):
    fn = jax.jit(apj.prune.prune, static_argnames="scope") if jit else apj.prune.prune
    for seed in range(12):
        rng = np.random.default_rng(seed)
        mask, sc = random_tree(rng, "mask"), random_tree(rng, "scores")
        for fraction in FRACTIONS:
            new = fn(mask, sc, fraction, scope=scope)
            expected = np_prune(mask, sc, fraction, scope)
            for got, want in zip(prunable_np(new), expected):
                np.testing.assert_array_equal(got, want)
            assert_fixed_leaves_alive(new)
            for before, after in zip(prunable_np(mask), prunable_np(new)):
                assert not np.any(after & ~before), "a pruned weight was revived"


def test_prune_rounds_half_to_even_and_fractions_that_round_to_zero():
    scores = {"k": jnp.arange(10, dtype=jnp.float32).reshape(2, 5)}
    cases = [(5, 0.5, 2), (7, 0.5, 4), (10, 0.04, 0), (10, 0.05, 0), (10, 0.15, 2)]
    for alive_count, fraction, expected_pruned in cases:
        mask = {"k": jnp.asarray(np.arange(10).reshape(2, 5) < alive_count)}
        new = apj.prune.prune(mask, scores, fraction)
        assert alive_count - int(new["k"].sum()) == expected_pruned


def test_prune_ties_go_to_lower_flat_index_across_leaves():
    mask = {"a": jnp.ones((2, 2), bool), "b": jnp.ones((1, 3), bool)}
    scores = {"a": jnp.array([[1.0, 0.0], [0.0, 1.0]]), "b": jnp.array([[0.0, 0.0, 1.0]])}
    new = apj.prune.prune(mask, scores, 0.43)  # round(0.43 * 7) = 3 of the four zeros
    np.testing.assert_array_equal(new["a"], [[True, False], [False, True]])
    np.testing.assert_array_equal(new["b"], [[False, True, True]])


def test_inf_scores_taken_only_after_all_finite():
    mask = {"k": jnp.array([[True, True, True, False]])}
    scores = {"k": jnp.array([[jnp.inf, 5.0, jnp.inf, 0.0]])}
    new = apj.prune.prune(mask, scores, 0.67)  # 2 of 3 alive: the finite one, then the first +inf
    np.testing.assert_array_equal(new["k"], [[False, False, True, False]])


def test_traced_fraction_under_jit():
    rng = np.random.default_rng(0)
    mask, sc = random_tree(rng, "mask"), random_tree(rng, "scores")
    fn = jax.jit(lambda m, s, f: apj.prune.prune(m, s, f))
    for fraction in (0.1, 0.3):
        got = prunable_np(fn(mask, sc, jnp.float32(fraction)))
        for g, w in zip(got, np_prune(mask, sc, fraction, "global")):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_fraction_is_value_error_naming_it(bad):
    mask = {"k": jnp.ones((2, 2), bool)}
    with pytest.raises(ValueError, match="fraction must be in"):
        apj.prune.prune(mask, mask, bad)


def test_bad_trees_and_no_prunable_leaves():
    mask = {"k": jnp.ones((2, 2), bool)}
    with pytest.raises(ValueError, match="do not match"):
        apj.prune.prune(mask, {"j": jnp.ones((2, 2))}, 0.1)
    with pytest.raises(ValueError, match="shape"):
        apj.masks.apply({"k": jnp.ones((2, 3))}, mask)
    with pytest.raises(ValueError, match="no prunable leaves"):
        apj.prune.prune({"b": jnp.ones(3, bool)}, {"b": jnp.ones(3)}, 0.1)
    with pytest.raises(ValueError, match="scope"):
        apj.prune.prune(mask, mask, 0.1, scope="per-layer")
    with pytest.raises(ValueError, match="not prunable"):
        apj.prune.prune({"k": jnp.ones((2, 2), bool), "b": jnp.array([True, False])},
                        {"k": jnp.ones((2, 2)), "b": jnp.ones(2)}, 0.1)


def test_masks_helpers_vs_numpy():
    rng = np.random.default_rng(3)
    params, mask = random_tree(rng, "params"), random_tree(rng, "mask")
    applied = apj.masks.apply(params, mask)
    for p, m, a in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask),
                       jax.tree_util.tree_leaves(applied)):
        np.testing.assert_array_equal(np.asarray(a), np.where(np.asarray(m), np.asarray(p), 0.0))
    leaves = prunable_np(mask)
    pruned = sum((~x).sum() for x in leaves)
    total = sum(x.size for x in leaves)
    assert float(apj.masks.sparsity(mask)) == pytest.approx(pruned / total)
    assert float(jax.jit(apj.masks.sparsity)(mask)) == pytest.approx(pruned / total)
    table = apj.masks.layer_sparsity(mask)
    assert list(table) == ["block/conv/kernel", "block/dense/kernel", "conv/kernel"]
    assert float(table["conv/kernel"]) == pytest.approx(1 - np.asarray(mask["conv"]["kernel"]).mean())
    assert jax.tree_util.tree_leaves(apj.masks.prunable(params)) == [True, True, False, False, True]
    assert all(np.all(np.asarray(x)) for x in jax.tree_util.tree_leaves(apj.masks.init(params)))


def test_scores():
    rng = np.random.default_rng(4)
    params, ref = random_tree(rng, "params"), random_tree(rng, "params")
    for got, p, r in zip(jax.tree_util.tree_leaves(apj.scores.weight_change(params, ref)),
                         jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(got, np.abs(np.asarray(p) - np.asarray(r)))
    r1 = apj.scores.random(jax.random.key(0), params)
    r2 = apj.scores.random(jax.random.key(0), params)
    chex_leaves = jax.tree_util.tree_leaves(r1)
    assert all(np.all((0 <= np.asarray(x)) & (np.asarray(x) < 1)) for x in chex_leaves)
    for a, b in zip(chex_leaves, jax.tree_util.tree_leaves(r2)):
        np.testing.assert_array_equal(a, b)


# --- AP ---------------------------------------------------------------------------------------


def np_ap_prune(mask, params, ref, rate, ap_rate, scope):
    """Numpy Algorithm 2 step: magnitude for (rate - ap_rate), then AP among alive negatives."""
    m = prunable_np(mask)
    alive_n = [sum(x.sum() for x in m)] if scope == "global" else [x.sum() for x in m]
    base = [np_count(rate - ap_rate, n) for n in alive_n]
    apn = [np_count(ap_rate, n) for n in alive_n]
    mag = jax.tree_util.tree_map(lambda w: jnp.abs(w), params)
    after = np_prune(mask, mag, None, scope, counts=base[0] if scope == "global" else base)
    leaves, treedef = jax.tree_util.tree_flatten(mask)
    it = iter(after)
    after_tree = jax.tree_util.tree_unflatten(treedef, [next(it) if np.ndim(x) >= 2 else x for x in leaves])
    ap_s = jax.tree_util.tree_map(
        lambda w, r: np.where(np.asarray(w) < 0, np.abs(np.asarray(w) - np.asarray(r)), np.inf), params, ref)
    return np_prune(after_tree, ap_s, None, scope, spare_inf=True,
                    counts=apn[0] if scope == "global" else apn)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("jit", [False, True])
def test_ap_prune_matches_numpy(scope, jit):
    fn = jax.jit(apj.ap.ap_prune, static_argnames="scope") if jit else apj.ap.ap_prune
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        mask, params, ref = random_tree(rng, "mask"), random_tree(rng, "params"), random_tree(rng, "params")
        for rate, ap_rate in [(0.2, 0.02), (0.2, 0.0), (0.5, 0.3), (0.3, 0.3)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new = fn(mask, params, ref, rate=rate, ap_rate=ap_rate, scope=scope)
            for got, want in zip(prunable_np(new), np_ap_prune(mask, params, ref, rate, ap_rate, scope)):
                np.testing.assert_array_equal(got, want)


def test_ap_step_hand_worked():
    """Six weights, rate 0.5, ap_rate 0.2 (N = 6).

    Magnitude step: round(0.3 * 6) = 2 smallest |w|: -0.1 (index 2) and 0.2 (index 4).
    AP step: round(0.2 * 6) = 1 among the alive negatives -0.5 (|dW| = 0.1) and -0.7
    (|dW| = 0.01): index 5 goes. Positive 0.3 has |dW| = 0 but is not negative, so it stays.
    """
    w = {"k": jnp.array([[-0.5, 0.3], [-0.1, 0.9], [0.2, -0.7]])}
    w0 = {"k": jnp.array([[-0.4, 0.3], [0.3, 0.9], [0.2, -0.71]])}
    new = apj.ap.ap_prune(apj.masks.init(w), w, w0, rate=0.5, ap_rate=0.2)
    np.testing.assert_array_equal(new["k"], [[True, True], [False, True], [False, False]])
    s = apj.ap.ap_scores(w, w0)["k"]
    np.testing.assert_allclose(s, [[0.1, np.inf], [0.4, np.inf], [np.inf, 0.01]], rtol=1e-5)


def test_ap_with_too_few_negatives_prunes_them_and_warns():
    w = {"k": jnp.array([[-0.5, 0.3, 0.0], [-0.1, 0.9, 0.4]])}
    with pytest.warns(UserWarning, match="only 2 alive negative"):
        new = apj.ap.ap_prune(apj.masks.init(w), w, w, rate=0.9, ap_rate=0.8)
    # base: round(0.1 * 6) = 1 -> 0.0 (index 2); AP wants 5, only -0.5 and -0.1 are negative.
    np.testing.assert_array_equal(new["k"], [[False, True, False], [False, True, True]])


@pytest.mark.parametrize("rate,ap_rate,match", [(0.2, 0.3, "must not exceed"), (1.0, 0.02, "rate must be"),
                                                (0.2, -0.01, "ap_rate must be")])
def test_ap_bad_rates(rate, ap_rate, match):
    w = {"k": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match=match):
        apj.ap.ap_prune(apj.masks.init(w), w, w, rate=rate, ap_rate=ap_rate)


def test_remaining_after_cycles_is_point_eight_to_the_c():
    rng = np.random.default_rng(7)
    params = {"a": {"kernel": jnp.asarray(rng.normal(size=(60, 50)))},
              "b": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 16)))}}
    total = 60 * 50 + 3 * 3 * 8 * 16
    mask = apj.masks.init(params)
    for c in range(1, 9):
        mask = apj.ap.ap_prune(mask, params, jax.tree_util.tree_map(lambda x: 0.9 * x, params))
        alive = int(apj.masks.alive_count(mask))
        assert abs(alive - total * 0.8 ** c) <= c


def test_special_scores_order_hand_worked():
    """-inf, then numbers, -0.0 and subnormals tie with 0.0 (lower index first), NaNs, then +inf."""
    tiny = np.float32(1e-45)
    values = np.array([0.0, -0.0, -np.nan, np.nan, -np.inf, np.inf, tiny, -tiny, 1.0, -1.0], np.float32)
    expected_order = [4, 9, 0, 1, 6, 7, 8, 2, 3, 5]
    mask = {"k": jnp.ones((2, 5), bool)}
    scores = {"k": jnp.asarray(values.reshape(2, 5))}
    for count in range(len(values) + 1):
        got = np.asarray(apj.prune.prune_count(mask, scores, count)["k"]).ravel()
        want = np.ones(len(values), bool)
        want[expected_order[:count]] = False
        np.testing.assert_array_equal(got, want)


def test_count_above_alive_prunes_every_alive_weight():
    mask = {"k": jnp.array([[True, False, True], [True, True, False]])}
    scores = {"k": jnp.array([[1.0, 0.0, np.inf], [2.0, 1.0, 5.0]])}
    np.testing.assert_array_equal(apj.prune.prune_count(mask, scores, 10)["k"], np.zeros((2, 3), bool))
    spared = apj.prune.prune_count(mask, scores, 10, spare_inf=True)["k"]
    np.testing.assert_array_equal(spared, [[False, False, True], [False, False, False]])


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("tied", [False, True])
def test_prune_leaves_bigger_than_a_chunk_match_numpy(scope, tied):
    """Leaves of one chunk plus a tail, of exactly two chunks, and a small one, jitted."""
    rng = np.random.default_rng(5)
    shapes = [(300, 300), (256, 512), (3, 5)]
    assert 300 * 300 > apj.prune.CHUNK and 256 * 512 == 2 * apj.prune.CHUNK
    mask = {f"l{i}": jnp.asarray(rng.random(s) < 0.8) for i, s in enumerate(shapes)}

    def score(shape):
        values = rng.integers(0, 50, size=shape).astype(np.float32) if tied else rng.random(shape, np.float32)
        values[rng.random(shape) < 0.05] = np.inf
        return jnp.asarray(values)

    scores = {f"l{i}": score(s) for i, s in enumerate(shapes)}
    fn = jax.jit(apj.prune.prune, static_argnames="scope")
    for fraction in (0.1, 0.5, 0.97):
        got = prunable_np(fn(mask, scores, fraction, scope=scope))
        for g, w in zip(got, np_prune(mask, scores, fraction, scope)):
            np.testing.assert_array_equal(g, w)
