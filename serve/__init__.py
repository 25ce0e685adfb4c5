"""Serving: inference backends behind one interface (torch, ONNX Runtime)."""
