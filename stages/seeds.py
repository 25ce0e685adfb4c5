"""seeds: iDAT against its baseline and the continual study (CDL) over `seeds.count` seeds,
mean ± std and the paired differences; not part of `make repro` (`dvc repro seeds`)."""

from __future__ import annotations

from pipeline import paths, summary
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.plots import seed_bars
from pipeline.seeds import seed_study


def main(argv: list[str]) -> None:
    report = seed_study(load_params())
    summary.save("seeds", report)
    seed_bars(report, paths.PLOTS / "seeds.png")


if __name__ == "__main__":
    run_stage(main)
