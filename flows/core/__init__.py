"""The execution core every engine shares: calls and records, the cache, ``execute``, the retry
policy, the artifact store, run locks, injected faults, and the base of every run config.

Nothing here knows a pipeline (distill, lam) or an engine (Prefect, dflow): pipelines describe
work as :class:`~lamflow.flows.core.records.StepCall` batches, engines run them through
:func:`~lamflow.flows.core.execute.execute`.
"""
