"""Validation and measurement: the original model as oracle, parity reports, profiles, memory cgroups.

It runs artifacts in their engines and compares them with transformers fp32 and OpenAI's gpt_oss, measures
speed and memory (also inside a cgroup at a device's budget) and the machine itself (device_measure), and
trains the tiny text models used as a top-1 fixture (trained).
May import: the helpers, formats, planner, exporters and runtimes; not package or the CLI.
"""
