"""The examples' data: CIFAR-10 from the data dir (``ap_jax.data.resolve_data_dir``'s order), or
class-coloured noise where there is none, so the examples run on any machine."""

import jax

from ap_jax import data


def load(data_dir, train_size, test_size):
    """Normalised float images and int labels: ``(x_train, y_train, x_test, y_test)``."""
    try:
        ds = data.load("cifar10", data_dir, train_size=train_size)
        return (data.normalize(ds.x_train, ds.mean, ds.std), ds.y_train,
                data.normalize(ds.x_test[:test_size], ds.mean, ds.std), ds.y_test[:test_size])
    except data.DataError as err:
        print(f"{err}\n-> synthetic data: each class a mean colour under noise")
        keys = jax.random.split(jax.random.key(1), 3)
        y = jax.random.randint(keys[0], (train_size + test_size,), 0, 10)
        x = jax.random.normal(keys[1], (10, 1, 1, 3))[y] + 2 * jax.random.normal(keys[2], (len(y), 32, 32, 3))
        return x[:train_size], y[:train_size], x[train_size:], y[train_size:]
