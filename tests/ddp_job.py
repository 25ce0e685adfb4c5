"""A tiny real training run, alone or as one of the processes torchrun starts.

usage: python -m pipeline.launch ddp_job OUT_DIR [BATCH_SIZE]   (tests/ on PYTHONPATH)

Every process writes OUT_DIR/adapter-<rank>.safetensors (its trained adapter) and
OUT_DIR/checkpoints-<rank>.json (whether its checkpoint folder existed after each epoch), and
gives `fit` its own checkpoint and dvclive folders, so the test sees which rank wrote what.
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pipeline import adapters, models
from pipeline.cli import run_stage
from pipeline.config import TrainConfig
from pipeline.data.glyphs import generate
from pipeline.train import fit
from pipeline.train.distributed import rank

TINY = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    batch_size = int(argv[1]) if len(argv) > 1 else 16
    # 65 images: four full batches of 16, then one image, which leaves a process an empty share
    data = generate(num_classes=4, samples_per_class=17, image_size=16, seed=0)
    data = data.subset(np.arange(65))
    torch.manual_seed(0)  # the frozen backbone is random here: the same in every process
    model = models.create("vit_tiny_patch16_224", TINY, 4)
    # no dropout: each process draws its own masks, which no single process can reproduce
    adapters.inject(model, "lora", rank=2, dropout=0.0)
    checkpoints = out / f"checkpoint-{rank()}"
    written = []
    fit(
        model,
        data,
        data,
        # moved images: each process moves its share of a batch as one process would
        TrainConfig(epochs=2, batch_size=batch_size, lr=1e-2, warmup_epochs=1, shift=2),
        seed=3,
        checkpoint_dir=checkpoints,
        live_dir=out / f"live-{rank()}",
        desc="job",
        on_epoch_end=lambda epoch: written.append(checkpoints.is_dir()),
    )
    state = {k: v.contiguous() for k, v in adapters.trainable_state(model).items()}
    save_file(state, out / f"adapter-{rank()}.safetensors")
    (out / f"checkpoints-{rank()}.json").write_text(json.dumps(written))


if __name__ == "__main__":
    run_stage(main)
