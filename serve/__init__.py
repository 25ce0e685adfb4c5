"""Serving: the KServe v2 inference server (`python -m serve`), its backends and dynamic batcher,
and the load client that measures it (`python -m serve.bench`)."""
