"""The local executor: each attempt's steps as process groups on this machine.

``executor`` (:class:`LocalExecutor`, reclaim) starts an ``attempt`` (the
step loop over :mod:`engine.exec.program`, heartbeats, hang detection); each
step is a ``child`` (exit, pipes, reaping) started by ``spawn``, its output
in ``logs``; ``procfs`` reads /proc and stops process groups; the
``guardian`` script, told by ``guardian_client``, stops them should the
engine die; ``orphans`` adopts what escapes its group.
"""
