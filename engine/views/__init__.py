"""The read side: what status, dlq, stats, queries, reports and schemas show.

Nothing here imports ``engine.run``, ``engine.map`` or ``engine.exec``.
"""
