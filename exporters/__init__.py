"""Exporters: streaming writers that turn a checkpoint into an artifact (GGUF, ONNX), atomically.

May import: the helpers, edgeoss.formats and edgeoss.planner; never a runtime, validate or package.
"""
