"""AP in your own Flax Linen training loop: a small CNN with BatchNorm, two cycles of X (LTH:
magnitude pruning, rewind to init) and of X+AP, printing test accuracy and DNR per cycle.

    python examples/linen_own_loop.py   # CIFAR-10 from the data dir, else synthetic images
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from cifar_or_synthetic import load

import ap_jax as apj
from ap_jax import data


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        for features in (16, 32):
            x = nn.Conv(features, (3, 3), use_bias=False)(x)
            x = apj.stats.ReLU()(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    for flag, default in (("--train-size", 5000), ("--test-size", 1000), ("--epochs", 2), ("--batch-size", 100)):
        parser.add_argument(flag, type=int, default=default)  # the tests shrink these
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--ap-rate", type=float, default=0.02)
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load(args.data_dir, args.train_size, args.test_size)
    model, tx = CNN(), apj.loop.keep_pruned_zero(optax.sgd(0.02, momentum=0.9))
    theta0 = model.init(jax.random.key(0), x_train[:1], train=False)

    @jax.jit
    def train_step(params, batch_stats, opt_state, mask, x, y):
        def loss_fn(p):
            variables = {"params": p, "batch_stats": batch_stats}
            logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]
        grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params, mask=mask)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    @jax.jit
    def evaluate(variables, x, y):  # accuracy and ReLU counts, BatchNorm in eval mode
        accuracy = jnp.mean(model.apply(variables, x, train=False).argmax(-1) == y)
        return accuracy, apj.stats.relu_counts(model, variables, x, train=False)

    for arm, ap_rate in (("X", 0.0), ("X+AP", args.ap_rate)):
        mask = apj.masks.init(theta0["params"])
        for cycle in range(2):
            start, batch_stats = apj.masks.apply(theta0["params"], mask), theta0["batch_stats"]  # rewind
            params, opt_state = start, tx.init(start)
            for epoch in range(args.epochs):
                order = data.epoch_order(jax.random.key(cycle), epoch, len(y_train), args.batch_size)
                for idx in order:
                    params, batch_stats, opt_state = train_step(params, batch_stats, opt_state, mask,
                                                                x_train[idx], y_train[idx])
            accuracy, counts = evaluate({"params": params, "batch_stats": batch_stats}, x_test, y_test)
            dnr = apj.stats.dead_neuron_rate(counts)["overall"]
            print(f"{arm:5s} cycle {cycle}: {100 * float(apj.masks.remaining(mask)):5.1f} % weights left, "
                  f"accuracy {100 * float(accuracy):.2f} %, DNR {100 * dnr:.2f} %")
            mask = apj.loop.prune_cycle(mask, params, start, args.rate, ap_rate)


if __name__ == "__main__":
    main()
