"""prepare: the downstream task splits and the glyphs source data, as uint8 arrays."""

from __future__ import annotations

from pipeline import paths, summary
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.data import prepare, save_split


def main(argv: list[str]) -> None:
    params = load_params()
    task = prepare.downstream(params.data)
    prepare.check_task(params, task)  # before anything is written: nothing trains on bad settings
    for name, split in task.items():
        save_split(paths.DOWNSTREAM / f"{name}.npz", split)
    src = prepare.source(params.pretrain, params.data.image_size, params.seed)
    for name, split in src.items():
        save_split(paths.SOURCE / f"{name}.npz", split)
    report = {
        "downstream": {
            "source": params.data.source,
            "classes": task["train"].classes,
            **{k: len(v) for k, v in task.items()},
        },
        "source": {
            "dataset": "glyphs",
            "classes": len(src["train"].classes),
            **{k: len(v) for k, v in src.items()},
        },
    }
    summary.save("prepare", report)
    print(f"prepared {report}")


if __name__ == "__main__":
    run_stage(main)
