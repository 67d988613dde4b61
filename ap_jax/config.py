"""Run configuration: one frozen dataclass, its canonical hash, and an argparse CLI built from it.

Every field that changes a result lives in ``RunConfig`` and so in its hash (as in OpenLTH,
runs are named by a hash of their hyper-parameters). Paths and display options do not. The CLI
is generated from the fields (``--field-name``, help from the field metadata), so a new field is
a new flag with no second list to keep in sync.

Every field declares its domain next to its definition (``ap_jax.domains``: type, finite range
or choices) and, where it has one, what it needs of other fields (``needs=``). Building a
``RunConfig`` checks them all (:func:`check`), so flags, ``--set FIELD=VALUE``, a stored
``config.json`` and Python code reject a bad value with the same one-line ``ValueError``, before
anything is written. A field without a domain is an error when this module is imported. A value
that only makes sense within the data (``dnr_size``) is resolved at construction (``resolve=``),
before anything hashes it, so one computation has one hash.

A field added after results were published is marked ``added=True``: while it holds its default
it is left out of the hashed string (OpenLTH's rule), so every older config keeps its hash, and a
``config.json`` written before it existed reads as holding the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from typing import Any, Callable, Sequence

from ap_jax import ap, methods, models
from ap_jax.catalog import DATASETS, IMAGE_SIZE, STREAMED
from ap_jax.domains import INT32_MAX, Choice, Domain, Flag, Needs, Number, Shares, integer, real
from ap_jax.prune import SCOPES

FINETUNE_LR = 1e-3  # finetune_lr's default, the only value other methods accept
# The choices of the official code's switches (ap_jax.official says what each does).
INITS = ("model", "xavier")
LR_SCHEDULES = ("step", "official")
PRUNE_RULES = ("paper", "official")
SEED = integer(0, 2**32 - 1)  # jax's threefry keys take 32-bit seeds: larger ones would collide


def _field(default: Any, help: str, domain: Domain, *, needs: Sequence[Needs] = (),
           resolve: Callable[[Any], Any] | None = None, **extra: Any) -> Any:
    """A config field: its default, help, domain, what it needs of other fields, and (for a value
    bounded by the data) how it is resolved before hashing."""
    return dataclasses.field(default=default, metadata={"help": help, "domain": domain, "needs": tuple(needs),
                                                        "resolve": resolve, **extra})


def _streamed(dataset: str) -> bool:
    return dataset in STREAMED


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One iterative-pruning run: model, data, base method X, AP share, schedule and seed."""

    model: str = _field("mlp", "network", Choice(models.names()))
    shortcut: str = _field("B", "ResNet shortcut: A (zero-pad, He et al.) or B (1x1 conv, official AP code)",
                           Choice(("A", "B")))
    dataset: str = _field("cifar10", "tfds dataset name: on the device (CIFAR) or streamed (ImageNet)",
                          Choice((*DATASETS, *STREAMED)))
    train_size: int = _field(0, "class-balanced training subset size (0: the whole split)",
                             Number(int, 0, INT32_MAX, low_open=True, zero="all"))
    image_size: int = _field(0, f"side in pixels of a streamed dataset's crops (0: {IMAGE_SIZE}); CIFAR: 0 only",
                             Number(int, 0, 1024, low_open=True, zero="the dataset's"), added=True, needs=[
                                 Needs(lambda c: c.image_size == 0 or _streamed(c.dataset),
                                       f"--image-size is for the streamed datasets ({', '.join(STREAMED)}) only, "
                                       "got {image_size} with --dataset {dataset}")])
    method: str = _field("lth", "base pruning method X", Choice(tuple(methods.METHODS)))
    rewind_step: int = _field(0, "lth_rewind: rewind to the dense run's weights after this many steps "
                              "(0: not lth_rewind)", integer(0), added=True, needs=[
                                  Needs(lambda c: c.method != "lth_rewind" or c.rewind_step >= 1,
                                        "--method lth_rewind needs --rewind-step >= 1 (the step of cycle 0 to "
                                        "rewind to), got {rewind_step}"),
                                  Needs(lambda c: c.method == "lth_rewind" or c.rewind_step == 0,
                                        "--rewind-step is used by --method lth_rewind only, got {rewind_step} "
                                        "with --method {method}")])
    finetune_lr: float = _field(FINETUNE_LR, "finetune: constant LR of every pruned cycle (Renda et al.: the "
                                "schedule's final LR)", real(0, low_open=True), added=True, needs=[
                                    Needs(lambda c: c.method == "finetune" or c.finetune_lr == FINETUNE_LR,
                                          "--finetune-lr is used by --method finetune only, got {finetune_lr} "
                                          "with --method {method}")])
    rate: float = _field(0.2, "share p of the alive prunable weights removed per cycle",
                         real(0, 1, high_open=True))
    ap_rate: float = _field(0.0, "share q of the alive prunable weights AP removes per cycle, out of "
                            "--rate (0: X alone; paper: 0.02 of 0.2)", real(0, 1, high_open=True), needs=[
                                Needs(lambda c: c.ap_rate <= c.rate,
                                      "--ap-rate ({ap_rate}) must not exceed --rate ({rate})")])
    ap_variant: str = _field("ap", "AP score: the paper's, or an ablation/substitution (see ap_jax.ap)",
                             Choice(tuple(ap.AP_VARIANTS)), added=True)
    ap_start_cycle: int = _field(0, "first cycle whose prune uses AP; before it X takes the whole rate",
                                 integer(0), added=True, needs=[
                                     Needs(lambda c: c.ap_start_cycle < c.cycles,
                                           "--ap-start-cycle must be in [0, --cycles), got {ap_start_cycle} "
                                           "with --cycles {cycles}"),
                                     Needs(lambda c: c.method != "oneshot" or c.ap_start_cycle == 0,
                                           "--method oneshot prunes once, after cycle 0: --ap-start-cycle "
                                           "must be 0, got {ap_start_cycle}")])
    scope: str = _field("global", "pruning scope", Choice(SCOPES))
    cycles: int = _field(5, "pruning cycles after the dense run (remaining share 0.8^c)", integer(1, 1000))
    epochs: int = _field(10, "training epochs per cycle", integer(1, 10_000))
    dense_epochs: int = _field(0, "training epochs of the dense cycle 0, with its own LR schedule of that "
                               "length (0: --epochs, like every cycle)", integer(1, 10_000, zero="--epochs"),
                               added=True)
    batch_size: int = _field(128, "training batch size (at most the training examples: checked against the data)",
                             integer(1))
    lr: float = _field(0.1, "peak learning rate", real(0, low_open=True))
    momentum: float = _field(0.9, "SGD momentum", real(0, 1, high_open=True))
    weight_decay: float = _field(1e-4, "weight decay (coupled, PyTorch-style)", real(0, 1))
    decay_all: bool = _field(False, "decay every parameter, not only conv/dense kernels", Flag())
    lr_drops: tuple[float, ...] = _field((2 / 3, 5 / 6), "LR drops as shares of a cycle's steps", Shares())
    lr_gamma: float = _field(0.1, "LR multiplier at each drop", real(0, 1, low_open=True))
    warmup_steps: int = _field(0, "linear LR warm-up steps at the start of every cycle", integer(0))
    augment: bool = _field(True, "random crop (pad 4) + horizontal flip on training batches", Flag())
    dnr_size: int = _field(2000, "fixed unaugmented training examples the DNR is measured on (at most "
                           "--train-size: a larger value is resolved to it)", integer(1),
                           resolve=lambda c: min(c.dnr_size, c.train_size) if c.train_size else c.dnr_size)
    eval_batch_size: int = _field(1000, "batch size for test accuracy and DNR counts", integer(1))
    eval_every: int = _field(1, "test accuracy after every N-th epoch of a cycle and always after its last "
                             "(other epoch rows hold null); the DNR is measured after every epoch",
                             integer(1, 10_000), added=True)
    seed: int = _field(0, "seed for init, data order, subset and augmentation", SEED)
    # The official AP code's quirks, one switch each (ap_jax.official; official.preset sets all).
    init: str = _field("model", "initial weights: the model's own initializers, or the official code's "
                       "xavier (Xavier-normal kernels, BN gamma ~ N(1, 0.02), dense bias ~ N(0, 1))",
                       Choice(INITS), added=True)
    lr_schedule: str = _field("step", "LR schedule: step (warm-up, then drops at shares of the steps) or "
                              "official (the AP code's; see ap_jax.official.lr_schedule)",
                              Choice(LR_SCHEDULES), added=True)
    mask_bn_scale: bool = _field(False, "BatchNorm scales are prunable too (official code)", Flag(), added=True)
    prune_rule: str = _field("paper", "paper: exact counts, k smallest; official: X by |w| < percentile, "
                             "AP k = floor(q * pool) and score <= sort[k] (k+1 weights)",
                             Choice(PRUNE_RULES), added=True, needs=[
                                 Needs(lambda c: c.prune_rule == "paper" or c.scope == "global",
                                       "--prune-rule official prunes globally, got --scope {scope}")])
    duplicated_pool: bool = _field(False, "official rule's pool re-appends a weight tensor for every bias "
                                   "(the official code's bug); needs --prune-rule official", Flag(), added=True,
                                   needs=[Needs(lambda c: not c.duplicated_pool or c.prune_rule == "official",
                                                "--duplicated-pool needs --prune-rule official, got --prune-rule "
                                                "{prune_rule}")])
    reinit: bool = _field(False, "every cycle after the first starts from a fresh random init (official "
                          "--prune_type reinit); needs --method lth", Flag(), added=True, needs=[
                              Needs(lambda c: not c.reinit or c.method == "lth",
                                    "--reinit needs --method lth, got --method {method}")])
    reapply_mask: bool = _field(True, "mask re-applied after every step, fresh optimizer per cycle; false: "
                                "official (gradient zeroed at zero weights, momentum carried, pruned "
                                "weights revive)", Flag(), added=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # 1 and 1.0 are one setting, a list and a tuple too
            object.__setattr__(self, f.name, f.metadata["domain"].coerce(getattr(self, f.name)))
        check(self)
        for f in dataclasses.fields(self):
            if resolve := f.metadata["resolve"]:
                object.__setattr__(self, f.name, resolve(self))

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

    def optim(self) -> "OptimConfig":
        """The optimizer part of the config (``OPTIM_FIELDS``) as an ``OptimConfig``."""
        return OptimConfig(**{name: getattr(self, name) for name in OPTIM_FIELDS})


# The optimizer's numbers: SGD with momentum, coupled (PyTorch-style) weight decay, the LR's peak,
# warm-up and drops. Which schedule they shape (``lr_schedule``) is official.schedule_function's pick.
OPTIM_FIELDS = ("lr", "momentum", "weight_decay", "decay_all", "lr_drops", "lr_gamma", "warmup_steps")


def _section(name: str, fields: Sequence[str], doc: str) -> type:
    """A frozen dataclass of some ``RunConfig`` fields, with their types and defaults: one concern
    of the config as an object of its own, its fields declared once (in ``RunConfig``)."""
    declared = {f.name: f for f in dataclasses.fields(RunConfig)}
    section = dataclasses.make_dataclass(
        name, [(f, declared[f].type, dataclasses.field(default=declared[f].default)) for f in fields],
        frozen=True)
    section.__module__, section.__doc__ = __name__, doc
    return section


OptimConfig = _section("OptimConfig", OPTIM_FIELDS, "SGD with momentum, coupled (PyTorch-style) weight decay, "
                       "the LR's peak, warm-up and drops (``ap_jax.train``); fields and defaults as in ``RunConfig``.")


class WrongType(ValueError):
    """A config field holding a value of the wrong type (only a hand-edited ``config.json`` can)."""


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``name`` on its own (its domain), or None."""
    return _FIELDS[name].metadata["domain"].problem(value)


def check(cfg: RunConfig) -> None:
    """Raise ``ValueError`` naming the first bad value in ``cfg``: every field's domain, then what
    every field needs of the others (``WrongType`` for a value of the wrong type)."""
    for f in dataclasses.fields(RunConfig):
        domain, value = f.metadata["domain"], getattr(cfg, f.name)
        if problem := domain.problem(value):
            error = WrongType if not domain.has_type(value) else ValueError
            raise error(f"{_flag(f.name)} {problem}")
    values = cfg.to_dict()
    for f in dataclasses.fields(RunConfig):
        for need in f.metadata["needs"]:
            if not need.holds(cfg):
                raise ValueError(need.message.format(**values))


def check_seeds(seeds: Sequence[int], flag: str = "--seeds") -> None:
    """Raise ``ValueError`` unless every seed is in the ``seed`` field's domain."""
    for seed in seeds:
        if problem := SEED.problem(seed):
            raise ValueError(f"{flag} {problem}")


def _missing_domains() -> list[str]:
    """Fields declared without a domain (a new field must say what values it accepts)."""
    return [f.name for f in dataclasses.fields(RunConfig) if not hasattr(f.metadata.get("domain"), "problem")]


if missing := _missing_domains():
    raise TypeError(f"RunConfig fields without a domain: {', '.join(missing)}; declare one with _field")
_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def from_dict(values: dict[str, Any]) -> RunConfig:
    """The ``RunConfig`` a ``config.json`` describes; ``ValueError`` naming unknown or bad fields."""
    if not isinstance(values, dict):
        raise ValueError(f"a config is a JSON object of fields, got {type(values).__name__}")
    if unknown := sorted(set(values) - set(_FIELDS)):
        raise ValueError(f"unknown config fields {unknown} (written by another version of ap_jax?)")
    try:
        return RunConfig(**values)
    except WrongType as err:  # e.g. "cycles": "5"
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
    """An argparse type: an integer of at least 1 (and at most 2**31 - 1)."""
    value = int(text)
    if problem := integer(1).problem(value):
        raise argparse.ArgumentTypeError(f"{problem}")
    return value


def parse_bool(text: str) -> bool:
    """An argparse type: true/false, yes/no, on/off or 1/0."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_value(name: str, text: str) -> Any:
    """The typed value of field ``name`` written as ``text`` (``ValueError`` if it is no such value)."""
    default = _FIELDS[name].default
    try:
        if isinstance(default, bool):
            return parse_bool(text)
        if isinstance(default, tuple):
            return tuple(float(v) for v in text.split(","))
        return type(default)(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(str(err)) from None


def add_config_args(parser: argparse.ArgumentParser, defaults: RunConfig, skip: Sequence[str] = ()) -> None:
    """One flag per ``RunConfig`` field, with ``defaults`` as the shown defaults."""
    group = parser.add_argument_group("run configuration")
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        default = getattr(defaults, f.name)
        domain = f.metadata["domain"]
        accepted = "" if isinstance(domain, Choice) else f"{domain.describe()}; "
        kwargs: dict[str, Any] = {"default": default, "help": f"{f.metadata['help']} ({accepted}default: {default})"}
        if isinstance(default, bool):
            kwargs.update(type=parse_bool, metavar="BOOL")
        elif isinstance(default, tuple):
            kwargs.update(type=float, nargs="+", metavar="X")
        else:
            kwargs.update(type=type(default))
        if isinstance(domain, Choice):
            kwargs["choices"] = domain.options
        group.add_argument(_flag(f.name), dest=f.name, **kwargs)


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, **overrides: Any) -> RunConfig:
    """Build a ``RunConfig`` from parsed flags; a bad value becomes ``parser.error`` (exit 2)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)}
    values.update(overrides)
    try:
        return RunConfig(**values)
    except ValueError as err:
        parser.error(str(err))
