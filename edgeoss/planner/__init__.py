"""The planner: device profiles, memory breakdown, expert placement, predicted speed, plan files.

Given a spec and a device it decides which experts stay in RAM, which stream from flash, and the engines'
settings, and says plainly when something does not fit; cache replay checks placements against traces.
May import: the helpers and edgeoss.formats only. Engines read the plan; the planner never imports an engine.
"""
