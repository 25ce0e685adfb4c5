"""Inference backends and their measurement, shared by the stages and the server.

Every backend takes a float32 NCHW batch and returns float32 logits (`base.Backend`);
`open.open_backend` opens an exported file, `pytorch.torch_backend` a model. `parity` compares an
artefact's logits with torch's, `latency` times backends into benchmark rows. This package's
own import is torch-free (the tables of `base`), so the params schema can read them.
"""

from pipeline.runtime.base import BACKENDS, TORCH_BACKENDS, Backend, run_batched

__all__ = ["BACKENDS", "TORCH_BACKENDS", "Backend", "run_batched"]
