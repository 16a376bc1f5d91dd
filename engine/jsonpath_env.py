"""The python-jsonpath environment behind ``map.json_path`` and ``map.filter``.

Its own module so that runs without either never import python-jsonpath.
"""

from __future__ import annotations

import jsonpath
from jsonpath.filter import UNDEFINED
from jsonpath.function_extensions import ExpressionType, FilterFunction

__all__ = ["environment"]


class _EndsWith(FilterFunction):
    arg_types = [ExpressionType.VALUE, ExpressionType.VALUE]
    return_type = ExpressionType.LOGICAL

    def __call__(self, value: object, suffix: object) -> bool:
        return isinstance(value, str) and isinstance(suffix, str) and value.endswith(suffix)


class _Includes(FilterFunction):
    arg_types = [ExpressionType.VALUE, ExpressionType.VALUE]
    return_type = ExpressionType.LOGICAL

    def __call__(self, container: object, member: object) -> bool:
        if isinstance(container, str):
            return isinstance(member, str) and member in container
        if isinstance(container, list | dict):
            return member in container
        return False


class _IsNull(FilterFunction):
    arg_types = [ExpressionType.VALUE]
    return_type = ExpressionType.LOGICAL

    def __call__(self, value: object) -> bool:
        return value is None or value is UNDEFINED


def environment() -> jsonpath.JSONPathEnvironment:
    env = jsonpath.JSONPathEnvironment()
    env.function_extensions["ends_with"] = _EndsWith()
    env.function_extensions["starts_with"] = env.function_extensions["startswith"]
    env.function_extensions["includes"] = _Includes()
    env.function_extensions["is_null"] = _IsNull()
    return env
