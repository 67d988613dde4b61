"""Table 2: VGG-19 (with BN) on CIFAR-10, every base method with and without AP.

    python -m experiments.table2 --help              # full scale (a GPU)
    python -m experiments.table2 --scale cpu         # a CPU-sized run
"""

from ap_jax.config import RunConfig
from experiments import guard
from experiments.paper_table import TableSpec, main_for

LTH = "Frankle & Carbin 2019 (LTH VGG-19 recipe)"
SPEC = TableSpec(
    number=2,
    title="VGG-19 on CIFAR-10",
    full=RunConfig(model="vgg19", dataset="cifar10", rate=0.2, ap_rate=0.02, cycles=19, epochs=160,
                   batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_drops=(0.5, 0.75),
                   warmup_steps=10_000),
    sources={
        "model": "paper (Table 2): the LTH VGG-19 with BN",
        "epochs": LTH, "batch_size": LTH, "lr": LTH,
        "warmup_steps": f"{LTH}: 10k-iteration linear warm-up",
        "lr_drops": f"{LTH}: ÷10 at epochs 80 and 120",
        "weight_decay": "paper (1e-4) and LTH", "momentum": "paper",
        "rate": "paper", "ap_rate": "paper",
        "cycles": "our choice: 19 cycles reach 1.4 % remaining",
    },
    cpu={"train_size": 1000, "epochs": 1, "cycles": 2, "warmup_steps": 0},
    levels=(5, 7, 10, 13, 16, 19),
    rewind_step={"full": 2000, "cpu": 2},
)


def main(argv=None) -> int:
    """Run Table 2 (see ``experiments.paper_table``)."""
    return main_for(SPEC, argv)


if __name__ == "__main__":
    guard.exit_process(main())
