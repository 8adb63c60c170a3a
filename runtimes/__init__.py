"""Engines behind one interface: the reference runtime and adapters over real engines."""
