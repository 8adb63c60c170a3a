"""edgeoss: gpt-oss MXFP4 checkpoints onto 16 GB devices.

The data path, one layer per package, each importing only from the layers before it:

    helpers    errors, units, atomic, jsonfile, progress, plots
    formats    checkpoint -> spec (edgeoss.formats)
    planner    spec + device -> plan (edgeoss.planner)
    exporters  checkpoint (+ plan) -> artifact (edgeoss.exporters)  |  runtimes  artifact -> logits
    validate   parity and profile reports (edgeoss.validate)        |  package   bundles (edgeoss.package)
    cli, demo  the command line

tests/test_layers.py checks these rules by parsing every import.
"""
__version__ = "0.1.0"
