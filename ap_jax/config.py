"""Run configuration: one frozen dataclass, its canonical hash, and an argparse CLI built from it.

Every field that changes a result lives in ``RunConfig`` and so in its hash (as in OpenLTH,
runs are named by a hash of their hyper-parameters). Paths and display options do not. The CLI
is generated from the fields (``--field-name``, help from the field metadata), so a new field is
a new flag with no second list to keep in sync; a bad value is an argparse error (exit 2).

A field added after results were published is marked ``added=True``: while it holds its default
it is left out of the hashed string (OpenLTH's rule), so every older config keeps its hash, and a
``config.json`` written before it existed reads as holding the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from typing import Any, Sequence

from ap_jax import ap, methods, models, official
from ap_jax.data import DATASETS
from ap_jax.prune import SCOPES
from ap_jax.stream import IMAGE_SIZE, STREAMED
from ap_jax.train import LR_SCHEDULES


def _field(default: Any, help: str, **extra: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **extra})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One iterative-pruning run: model, data, base method X, AP share, schedule and seed."""

    model: str = _field("mlp", "network", choices=models.names())
    shortcut: str = _field("B", "ResNet shortcut: A (zero-pad, He et al.) or B (1x1 conv, official AP code)", choices=("A", "B"))
    dataset: str = _field("cifar10", "tfds dataset name: on the device (CIFAR) or streamed (ImageNet)",
                          choices=(*DATASETS, *STREAMED))
    train_size: int = _field(0, "class-balanced training subset size (0: the whole split)")
    image_size: int = _field(0, f"side in pixels of a streamed dataset's crops (0: {IMAGE_SIZE}); CIFAR: "
                             "0 only", added=True)
    method: str = _field("lth", "base pruning method X", choices=tuple(methods.METHODS))
    rewind_step: int = _field(0, "lth_rewind: rewind to the dense run's weights after this many steps "
                              "(0: not lth_rewind)", added=True)
    finetune_lr: float = _field(1e-3, "finetune: constant LR of every pruned cycle (Renda et al.: the "
                                "schedule's final LR)", added=True)
    rate: float = _field(0.2, "share p of the alive prunable weights removed per cycle, in [0, 1)")
    ap_rate: float = _field(0.0, "share q of the alive prunable weights AP removes per cycle, out of "
                            "--rate (0: X alone; paper: 0.02 of 0.2)")
    ap_variant: str = _field("ap", "AP score: the paper's, or an ablation/substitution (see ap_jax.ap)",
                             choices=tuple(ap.AP_VARIANTS), added=True)
    ap_start_cycle: int = _field(0, "first cycle whose prune uses AP; before it X takes the whole rate",
                                 added=True)
    scope: str = _field("global", "pruning scope", choices=SCOPES)
    cycles: int = _field(5, "pruning cycles after the dense run (remaining share 0.8^c)")
    epochs: int = _field(10, "training epochs per cycle")
    dense_epochs: int = _field(0, "training epochs of the dense cycle 0, with its own LR schedule of that "
                               "length (0: --epochs, like every cycle)", added=True)
    batch_size: int = _field(128, "training batch size")
    lr: float = _field(0.1, "peak learning rate")
    momentum: float = _field(0.9, "SGD momentum")
    weight_decay: float = _field(1e-4, "weight decay (coupled, PyTorch-style)")
    decay_all: bool = _field(False, "decay every parameter, not only conv/dense kernels")
    lr_drops: tuple[float, ...] = _field((2 / 3, 5 / 6), "LR drops as shares of a cycle's steps")
    lr_gamma: float = _field(0.1, "LR multiplier at each drop")
    warmup_steps: int = _field(0, "linear LR warm-up steps at the start of every cycle")
    augment: bool = _field(True, "random crop (pad 4) + horizontal flip on training batches")
    dnr_size: int = _field(2000, "fixed unaugmented training examples the DNR is measured on")
    eval_batch_size: int = _field(1000, "batch size for test accuracy and DNR counts")
    eval_every: int = _field(1, "test accuracy after every N-th epoch of a cycle and always after its last "
                             "(other epoch rows hold null); the DNR is measured after every epoch", added=True)
    seed: int = _field(0, "seed for init, data order, subset and augmentation")
    # The official AP code's quirks, one switch each (ap_jax.official; official.preset sets all).
    init: str = _field("model", "initial weights: the model's own initializers, or the official code's "
                       "xavier (Xavier-normal kernels, BN gamma ~ N(1, 0.02), dense bias ~ N(0, 1))",
                       choices=official.INITS, added=True)
    lr_schedule: str = _field("step", "LR schedule: step (warm-up, then drops at shares of the steps) or "
                              "official (the AP code's; see ap_jax.train.official_lr_schedule)",
                              choices=LR_SCHEDULES, added=True)
    mask_bn_scale: bool = _field(False, "BatchNorm scales are prunable too (official code)", added=True)
    prune_rule: str = _field("paper", "paper: exact counts, k smallest; official: X by |w| < percentile, "
                             "AP k = floor(q * pool) and score <= sort[k] (k+1 weights)",
                             choices=official.PRUNE_RULES, added=True)
    duplicated_pool: bool = _field(False, "official rule's pool re-appends a weight tensor for every bias "
                                   "(the official code's bug); needs --prune-rule official", added=True)
    reinit: bool = _field(False, "every cycle after the first starts from a fresh random init (official "
                          "--prune_type reinit); needs --method lth", added=True)
    reapply_mask: bool = _field(True, "mask re-applied after every step, fresh optimizer per cycle; false: "
                                "official (gradient zeroed at zero weights, momentum carried, pruned "
                                "weights revive)", added=True)

    def __post_init__(self) -> None:
        check(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def hash8(self) -> str:
        """First 8 hex digits of the sha256 of the canonical (sorted-key) JSON of the config.

        Fields marked ``added`` are left out while at their default (see the module doc).
        """
        added = _added_defaults()
        hashed = {k: v for k, v in self.to_dict().items() if k not in added or v != added[k]}
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]

    def cycle_epochs(self, cycle: int) -> int:
        """Training epochs of cycle ``cycle``: ``dense_epochs`` for cycle 0 when set, else ``epochs``."""
        return self.dense_epochs if cycle == 0 and self.dense_epochs else self.epochs

    def optim(self):
        """The optimizer part of the config as a ``train.OptimConfig``."""
        from ap_jax.train import OptimConfig

        names = {f.name for f in dataclasses.fields(OptimConfig)}
        return OptimConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def check(cfg: RunConfig) -> None:
    """Raise ``ValueError`` naming the first bad value in ``cfg``."""
    rules = [
        (0.0 <= cfg.rate < 1.0, f"--rate must be in [0, 1), got {cfg.rate}"),
        (0.0 <= cfg.ap_rate < 1.0, f"--ap-rate must be in [0, 1), got {cfg.ap_rate}"),
        (cfg.ap_rate <= cfg.rate, f"--ap-rate ({cfg.ap_rate}) must not exceed --rate ({cfg.rate})"),
        (cfg.ap_variant in ap.AP_VARIANTS,
         f"--ap-variant must be one of {', '.join(ap.AP_VARIANTS)}, got {cfg.ap_variant!r}"),
        (0 <= cfg.ap_start_cycle < max(cfg.cycles, 1),
         f"--ap-start-cycle must be in [0, --cycles), got {cfg.ap_start_cycle} with --cycles {cfg.cycles}"),
        (cfg.cycles >= 1, f"--cycles must be at least 1, got {cfg.cycles}"),
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.dense_epochs >= 0, f"--dense-epochs must be 0 (--epochs) or positive, got {cfg.dense_epochs}"),
        (cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
        (cfg.eval_batch_size >= 1, f"--eval-batch-size must be at least 1, got {cfg.eval_batch_size}"),
        (cfg.eval_every >= 1, f"--eval-every must be at least 1, got {cfg.eval_every}"),
        (cfg.train_size >= 0, f"--train-size must be 0 (all) or positive, got {cfg.train_size}"),
        (cfg.image_size >= 0, f"--image-size must be 0 (the dataset's) or positive, got {cfg.image_size}"),
        (cfg.image_size == 0 or cfg.dataset in STREAMED,
         f"--image-size is for the streamed datasets ({', '.join(STREAMED)}) only, got {cfg.image_size} "
         f"with --dataset {cfg.dataset}"),
        (cfg.dnr_size >= 1, f"--dnr-size must be at least 1, got {cfg.dnr_size}"),
        (cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}"),
        (all(0 < s < 1 for s in cfg.lr_drops), f"--lr-drops must lie in (0, 1), got {list(cfg.lr_drops)}"),
        (cfg.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {cfg.warmup_steps}"),
        (cfg.method in methods.METHODS,
         f"--method must be one of {', '.join(methods.METHODS)}, got {cfg.method!r}"),
        (cfg.method != "lth_rewind" or cfg.rewind_step >= 1,
         f"--method lth_rewind needs --rewind-step >= 1 (the step of cycle 0 to rewind to), got {cfg.rewind_step}"),
        (cfg.method == "lth_rewind" or cfg.rewind_step == 0,
         f"--rewind-step is used by --method lth_rewind only, got {cfg.rewind_step} with --method {cfg.method}"),
        (cfg.finetune_lr > 0, f"--finetune-lr must be positive, got {cfg.finetune_lr}"),
        (cfg.method == "finetune" or cfg.finetune_lr == _added_defaults()["finetune_lr"],
         f"--finetune-lr is used by --method finetune only, got {cfg.finetune_lr} with --method {cfg.method}"),
        (cfg.method != "oneshot" or cfg.ap_start_cycle == 0,
         f"--method oneshot prunes once, after cycle 0: --ap-start-cycle must be 0, got {cfg.ap_start_cycle}"),
        (not cfg.duplicated_pool or cfg.prune_rule == "official",
         f"--duplicated-pool needs --prune-rule official, got --prune-rule {cfg.prune_rule}"),
        (cfg.prune_rule == "paper" or cfg.scope == "global",
         f"--prune-rule official prunes globally, got --scope {cfg.scope}"),
        (not cfg.reinit or cfg.method == "lth", f"--reinit needs --method lth, got --method {cfg.method}"),
    ]
    for ok, message in rules:
        if not ok:
            raise ValueError(message)


def from_dict(values: dict[str, Any]) -> RunConfig:
    """The ``RunConfig`` a ``config.json`` describes; ``ValueError`` naming unknown or bad fields."""
    if not isinstance(values, dict):
        raise ValueError(f"a config is a JSON object of fields, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    if unknown := sorted(set(values) - known):
        raise ValueError(f"unknown config fields {unknown} (written by another version of ap_jax?)")
    try:
        return RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except TypeError as err:  # a field of the wrong type, e.g. "cycles": "5"
        raise ValueError(f"a config field has the wrong type ({err})") from None


def differences(stored: dict[str, Any], cfg: RunConfig) -> list[str]:
    """``"--field stored vs given"`` for every field where a stored config and ``cfg`` differ.

    An ``added`` field missing from ``stored`` (an older ``config.json``) counts as its default.
    """
    given, stored = cfg.to_dict(), {**_added_defaults(), **stored}
    return [f"{_flag(k)} {stored.get(k)!r} vs {given[k]!r}" for k in sorted(given) if stored.get(k) != given[k]]


def _added_defaults() -> dict[str, Any]:
    """Default of every field marked ``added`` (left out of the hash while at its default)."""
    return {f.name: f.default for f in dataclasses.fields(RunConfig) if f.metadata.get("added")}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_args(parser: argparse.ArgumentParser, defaults: RunConfig, skip: Sequence[str] = ()) -> None:
    """One flag per ``RunConfig`` field, with ``defaults`` as the shown defaults."""
    group = parser.add_argument_group("run configuration")
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"default": default, "help": f"{f.metadata['help']} (default: {default})"}
        if isinstance(default, bool):
            kwargs.update(type=_bool, metavar="BOOL")
        elif isinstance(default, tuple):
            kwargs.update(type=float, nargs="+", metavar="X")
        else:
            kwargs.update(type=type(default))
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(_flag(f.name), dest=f.name, **kwargs)


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, **overrides: Any) -> RunConfig:
    """Build a ``RunConfig`` from parsed flags; a bad value becomes ``parser.error`` (exit 2)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    values.update(overrides)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return RunConfig(**values)
    except ValueError as err:
        parser.error(str(err))
