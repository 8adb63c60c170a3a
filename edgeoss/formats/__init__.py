"""Formats: the files gpt-oss comes in and edgeoss writes, read and written strictly.

The model spec and its one canonical tensor table, the MXFP4 codec, safetensors, both checkpoint layouts,
synthesis and conversion, the o200k_harmony tokenizer and harmony, GGUF names and metadata, routing traces.
May import: the helpers (edgeoss.errors, units, atomic, jsonfile, progress) and other formats modules only.
"""
