"""What both methods build on (PyTorch): open_clip loading, the dual-path CLIP backbone, the deformable op,
the few-shot patch memory, map post-processing and the checkpoint format."""
