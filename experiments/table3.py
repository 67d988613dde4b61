"""Table 3: DenseNet-40 (growth 12) on CIFAR-100, every base method with and without AP.

    python -m experiments.table3 --help              # full scale (a GPU)
    python -m experiments.table3 --scale cpu         # a CPU-sized run
"""

from ap_jax.config import RunConfig
from experiments import guard
from experiments.paper_table import TableSpec, main_for

HUANG = "Huang et al. 2017 (DenseNet CIFAR recipe)"
SPEC = TableSpec(
    number=3,
    title="DenseNet-40 on CIFAR-100",
    full=RunConfig(model="densenet40", dataset="cifar100", rate=0.2, ap_rate=0.02, cycles=19, epochs=300,
                   batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4, lr_drops=(0.5, 0.75)),
    sources={
        "model": "paper (Table 3), DenseNet-40 with k = 12 (Huang et al. 2017)",
        "epochs": f"{HUANG}; the paper cites Zhao et al. 2019, which trains DenseNet-40 this way (our reading)",
        "batch_size": HUANG, "lr": HUANG, "lr_drops": f"{HUANG}: ÷10 at 50 % and 75 % of training",
        "weight_decay": HUANG, "momentum": f"{HUANG} (Nesterov there; plain momentum here)",
        "rate": "paper", "ap_rate": "paper",
        "cycles": "our choice: 19 cycles reach 1.4 % remaining",
    },
    cpu={"train_size": 1000, "epochs": 1, "cycles": 2},
    levels=(5, 7, 10, 13, 16, 19),
    rewind_step={"full": 2000, "cpu": 1},
    notes=("CIFAR-100 is not in the offline data dir: pass --data-dir to a TFDS dir holding cifar100:3.0.2.",),
)


def main(argv=None) -> int:
    """Run Table 3 (see ``experiments.paper_table``)."""
    return main_for(SPEC, argv)


if __name__ == "__main__":
    guard.exit_process(main())
