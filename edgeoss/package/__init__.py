"""Packaging: Android (llama.cpp) and Windows (onnxruntime-genai) bundles with manifests and checksums.

`build` lays out a bundle from a validated artifact and its plan; `bundle` writes and verifies manifests.
May import: the helpers, formats, planner, exporters and runtimes; not validate or the CLI.
"""
