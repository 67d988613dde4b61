"""ap_jax: AP (Activate-while-Pruning) for JAX/Flax.

The functional core (``masks``, ``scores``, ``prune``, ``ap``, ``stats``) is pure functions of
pytrees that any JAX code can import; ``loop`` and ``nnx_stats`` put AP into your own training
loop (Flax Linen or NNX, any optax optimizer); ``models``, ``data``, ``train`` and ``cycle`` build
the iterative-pruning experiments on top of it.
"""

from ap_jax import ap, loop, masks, models, nnx_stats, prune, scores, stats

__all__ = ["ap", "loop", "masks", "models", "nnx_stats", "prune", "scores", "stats"]
__version__ = "0.1.0"
