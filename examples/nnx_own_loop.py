"""AP in your own Flax NNX training loop: a small CNN with BatchNorm, two cycles of X (LTH:
magnitude pruning, rewind to init) and of X+AP, printing test accuracy and DNR per cycle.

    python examples/nnx_own_loop.py   # CIFAR-10 from the data dir, else synthetic images
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from cifar_or_synthetic import load

import ap_jax as apj
from ap_jax import data


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 16, (3, 3), use_bias=False, rngs=rngs)
        self.bn1, self.relu1 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs), apj.nnx_stats.ReLU()
        self.conv2 = nnx.Conv(16, 32, (3, 3), use_bias=False, rngs=rngs)
        self.bn2, self.relu2 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs), apj.nnx_stats.ReLU()
        self.fc = nnx.Linear(8 * 8 * 32, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(self.relu1(self.bn1(self.conv1(x))), (2, 2), (2, 2))
        x = nnx.max_pool(self.relu2(self.bn2(self.conv2(x))), (2, 2), (2, 2))
        return self.fc(x.reshape(x.shape[0], -1))


@nnx.jit
def train_step(model, optimizer, mask, x, y):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    optimizer.update(model, nnx.grad(loss_fn)(model), mask=mask)  # pruned weights stay exactly 0


@nnx.jit
def evaluate(model, x, y):  # accuracy and ReLU counts, BatchNorm in eval mode
    model.eval()
    accuracy = jnp.mean(model(x).argmax(-1) == y)
    counts = apj.nnx_stats.relu_counts(model, x)
    model.train()
    return accuracy, counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    for flag, default in (("--train-size", 5000), ("--test-size", 1000), ("--epochs", 2), ("--batch-size", 100)):
        parser.add_argument(flag, type=int, default=default)  # the tests shrink these
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--ap-rate", type=float, default=0.02)
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = load(args.data_dir, args.train_size, args.test_size)
    model, tx = CNN(nnx.Rngs(0)), apj.loop.keep_pruned_zero(optax.sgd(0.02, momentum=0.9))
    theta0 = jax.tree.map(jnp.copy, nnx.state(model))  # params and BatchNorm statistics at init
    for arm, ap_rate in (("X", 0.0), ("X+AP", args.ap_rate)):
        mask = apj.masks.init(nnx.state(model, nnx.Param))
        for cycle in range(2):
            nnx.update(model, theta0, apj.masks.apply(nnx.state(theta0, nnx.Param), mask))  # rewind
            start = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))  # a copy: nnx.state shares variables
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
            for epoch in range(args.epochs):
                order = data.epoch_order(jax.random.key(cycle), epoch, len(y_train), args.batch_size)
                for idx in order:
                    train_step(model, optimizer, mask, x_train[idx], y_train[idx])
            accuracy, counts = evaluate(model, x_test, y_test)
            dnr = apj.stats.dead_neuron_rate(counts)["overall"]
            print(f"{arm:5s} cycle {cycle}: {100 * float(apj.masks.remaining(mask)):5.1f} % weights left, "
                  f"accuracy {100 * float(accuracy):.2f} %, DNR {100 * dnr:.2f} %")
            mask = apj.loop.prune_cycle(mask, nnx.state(model, nnx.Param), start, args.rate, ap_rate)


if __name__ == "__main__":
    main()
