"""Torch-free primitives every layer may use: image io, transforms, grid cells, smoothing, metrics, atomic writes."""
