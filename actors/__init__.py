"""Ray actors and tasks: party shards that host many parties, the fusion actor, the assignment tasks.

Thin shells over ``fusion/`` and ``scenarios/``.
"""
