"""PyTorch -> artifacts: ONNX export and checks, deform flavours, op coverage, TensorRT build, the one bundle writer."""
