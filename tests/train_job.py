"""A tiny real training run, as a separate process the resume test can SIGKILL.

usage: python tests/train_job.py CHECKPOINT_DIR OUT_FILE [--slow]
"""

import sys
import time

import torch
from safetensors.torch import save_file

from pipeline import adapters, models
from pipeline.config import TrainConfig
from pipeline.data.glyphs import generate
from pipeline.train import fit

TINY = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def main() -> None:
    checkpoint_dir, out_file = sys.argv[1], sys.argv[2]
    slow = "--slow" in sys.argv
    data = generate(num_classes=4, samples_per_class=16, image_size=16, seed=0)
    torch.manual_seed(0)  # the frozen backbone is random here: the same in every process
    model = models.create("vit_tiny_patch16_224", TINY, 4)
    adapters.inject(model, "lora", rank=2, dropout=0.1)  # dropout: RNG state must resume too
    # moved images: a resumed epoch must move each image as the unbroken run did
    cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-2, warmup_epochs=1, shift=2)
    fit(
        model,
        data,
        data,
        cfg,
        seed=3,
        checkpoint_dir=checkpoint_dir,
        desc="job",
        on_epoch_end=(lambda epoch: time.sleep(30)) if slow else None,
    )
    save_file({k: v.contiguous() for k, v in adapters.trainable_state(model).items()}, out_file)


if __name__ == "__main__":
    main()
