"""Streaming writers that turn a checkpoint into an artifact (GGUF, ONNX)."""
