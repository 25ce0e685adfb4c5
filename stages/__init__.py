"""Thin DVC stage entry points: read params, call the pipeline library, write outputs."""
