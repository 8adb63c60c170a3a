"""edgeoss: gpt-oss MXFP4 checkpoints onto 16 GB devices."""
__version__ = "0.1.0"
