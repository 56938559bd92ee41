"""The recipe study behind the default Fashion-MNIST config (docs/recipe_study.md).

    python docs/measurements/recipe_study.py --root=/tmp/study --epochs=1 previous previous+crop50
    python docs/measurements/recipe_study.py --root=/tmp/study --list

Each named recipe is ``launch.py --config=BASE`` with the recipe's overrides,
``--config.num_epochs=EPOCHS``, the kNN monitor off and the table's BYOL row only (the random and
raw-pixel rows do not depend on the recipe; the full default run measures them). It records
the wall time of the whole command, the mean training images/s (``metrics.jsonl``) and the
row: linear top-1 (logistic regression to convergence, L2 chosen on held-out train from
``--l2_grid``), kNN k=20 and k=200. One JSON line per run goes to ``ROOT/study.jsonl`` and a
Markdown row to stdout.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import time

from absl import app, flags

# Overrides of --base (the ResNet-10 recipe that was the default while the study ran, now
# configs/fashion_mnist.py:quick); "a+b" applies a, then b. The 2026-12-06 study screened one
# change at a time from "previous", the default before it.
RECIPES: dict[str, list[str]] = {
    "default": [],
    "previous": [
        "--config.model.encoder=resnet18",
        "--config.model.base_width=32",
        "--config.augment.crop_area_min=0.35",
        "--config.warmup_epochs=0.5",
    ],
    "crop20": ["--config.augment.crop_area_min=0.2"],
    "crop50": ["--config.augment.crop_area_min=0.5"],
    "crop70": ["--config.augment.crop_area_min=0.7"],
    # Square crops: no aspect-ratio jitter (the garment's own proportions are class evidence).
    "aspect1": ["--config.augment.crop_aspect_range=(1.0,1.0)"],
    "noblur": ["--config.augment.blur_prob=(0.0,0.0)"],
    "jitter_half": ["--config.augment.jitter_strength=0.5"],
    "jitter_off": ["--config.augment.jitter_prob=0.0"],
    "nosolarize": ["--config.augment.solarize_prob=(0.0,0.0)"],
    "tau990": ["--config.base_tau=0.99"],
    "tau960": ["--config.base_tau=0.96"],
    "lr1": ["--config.optimizer.base_lr=1.0"],
    "lr2": ["--config.optimizer.base_lr=2.0"],
    "lr4": ["--config.optimizer.base_lr=4.0"],
    "lr8": ["--config.optimizer.base_lr=8.0"],
    # The released BYOL network's init: each residual branch's last BN scale starts at 0.
    "zinit": ["--config.model.zero_init_last_bn=True"],
    "wd1e-4": ["--config.optimizer.weight_decay=1e-4"],
    "wd1e-6": ["--config.optimizer.weight_decay=1e-6"],
    "batch32": ["--config.batch_size=32"],
    "batch128": ["--config.batch_size=128"],
    "warmup0.1": ["--config.warmup_epochs=0.1"],
    "heads1024": [
        "--config.model.projector_hidden_dim=1024",
        "--config.model.predictor_hidden_dim=1024",
    ],
    "stride2_w16": ["--config.model.stem=stride2", "--config.model.base_width=16"],
    # ResNet-10 (one basic block per stage): half the depth of ResNet-18.
    "r10_s2_w32": [
        "--config.model.encoder=resnet10",
        "--config.model.stem=stride2",
        "--config.model.base_width=32",
    ],
    "r10_s2_w24": [
        "--config.model.encoder=resnet10",
        "--config.model.stem=stride2",
        "--config.model.base_width=24",
    ],
    "r10_w64": ["--config.model.encoder=resnet10", "--config.model.base_width=64"],
    "width48": ["--config.model.base_width=48"],
    # On top of --base (:quick, ResNet-10 w64): two blocks per stage, whose random init is
    # weaker (75.0 vs 80.9% linear).
    "r18": ["--config.model.encoder=resnet18"],
    "width24": ["--config.model.base_width=24"],
}

_BASE = flags.DEFINE_string(
    "base", "configs/fashion_mnist.py:quick", "The config the recipes' overrides apply to."
)
_ROOT = flags.DEFINE_string("root", "/tmp/recipe_study", "Workdirs and study.jsonl go here.")
_EPOCHS = flags.DEFINE_integer("epochs", 1, "Pretraining epochs per recipe (a proxy).")
_L2_GRID = flags.DEFINE_string("l2_grid", "(1e-2,1e-3,1e-4,1e-5,1e-6)", "The table's L2 grid.")
_EXTRA = flags.DEFINE_multi_string("extra", [], "Overrides added to every recipe.")
_LIST = flags.DEFINE_bool("list", False, "Print the recipes and exit.")


def _overrides(spec: str) -> list[str]:
    """``a+b`` combines recipes ``a`` and ``b`` (later ones win)."""
    flags_ = []
    for name in spec.split("+"):
        if name not in RECIPES:
            raise app.UsageError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
        flags_ += RECIPES[name]
    return flags_


def _images_per_sec(workdir: pathlib.Path) -> float:
    values = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "images_per_sec" in record:
            values.append(record["images_per_sec"])
    # The first record includes warm-up after compilation.
    return statistics.median(values[1:] or values) if values else float("nan")


def run_recipe(spec: str, root: pathlib.Path) -> dict:
    workdir = root / spec
    command = [
        sys.executable,
        "launch.py",
        f"--config={_BASE.value}",
        f"--workdir={workdir}",
        f"--config.num_epochs={_EPOCHS.value}",
        "--config.evals.knn.every_steps=0",
        "--config.evals.table.at_end=True",
        "--config.evals.table.rows=('byol',)",
        f"--config.evals.table.l2_grid={_L2_GRID.value}",
        "--config.checkpoint_every_steps=100000",
        *_overrides(spec),
        *_EXTRA.value,
    ]
    start = time.time()
    log = (root / f"{spec}.log").open("w")
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.time() - start
    record = {"recipe": spec, "epochs": _EPOCHS.value, "wall_s": round(wall, 1),
              "returncode": result.returncode, "command": " ".join(command[1:])}  # fmt: skip
    if result.returncode == 0:
        record.update(json.loads((workdir / "summary.json").read_text())["table"]["byol"])
        record["images_per_sec"] = round(_images_per_sec(workdir), 1)
    with (root / "study.jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")
    return record


def main(argv: list[str]) -> None:
    if _LIST.value:
        for name, overrides in RECIPES.items():
            print(f"{name:14s} {' '.join(overrides)}")
        return
    root = pathlib.Path(_ROOT.value)
    root.mkdir(parents=True, exist_ok=True)
    print("| recipe | epochs | wall | img/s | linear | kNN-20 | kNN-200 | L2 |", flush=True)
    for spec in argv[1:]:
        r = run_recipe(spec, root)
        if r["returncode"]:
            print(
                f"| {spec} | failed (exit {r['returncode']}, see {root}/{spec}.log) |", flush=True
            )
            continue
        print(
            f"| {spec} | {r['epochs']:g} | {r['wall_s'] / 60:.1f} min | {r['images_per_sec']:.0f} "
            f"| {100 * r['linear_top1']:.2f} | {100 * r['knn20_top1']:.2f} "
            f"| {100 * r['knn200_top1']:.2f} | {r['l2']:.0e} |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
