"""Runtimes: engines behind one interface, the reference runtime and adapters over real engines.

May import: the helpers, edgeoss.formats and edgeoss.planner; never an exporter, validate or package.
"""
