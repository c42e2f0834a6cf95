"""Orchestration: config, the distillation loop, the engine adapters and the CLI.

A flow never does science itself; it wires :mod:`lamflow.steps`.
"""
