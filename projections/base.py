"""The base of every projection: a pure fold, one handler per event type.

A projection's handlers take the record (for ``seq`` and ``ts``) and its
payload. They do no I/O, read no clock and draw no random numbers: the same
events always fold to the same state, whether applied live by the engine or
replayed from the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from ledger.events import Event, Record

__all__ = ["Handler", "Projection", "handles"]

Handler = Callable[[Any, Record, Any], None]
F = TypeVar("F", bound=Callable[..., None])


def handles(*events: type[Event]) -> Callable[[F], F]:
    """Mark a method as the handler of the given event types."""

    def mark(fn: F) -> F:
        fn.__handles__ = events  # type: ignore[attr-defined]
        return fn

    return mark


class Projection:
    """A fold over records. Subclasses mark handlers with :func:`handles`."""

    handlers: ClassVar[dict[type[Event], Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type[Event], Handler] = {}
        for base in reversed(cls.__mro__[1:]):
            table.update(getattr(base, "handlers", {}))
        own: set[type[Event]] = set()
        for attr in vars(cls).values():
            for event in getattr(attr, "__handles__", ()):
                if event in own:
                    raise TypeError(f"{cls.__name__} handles {event.TYPE} twice")
                own.add(event)
                table[event] = attr
        cls.handlers = table

    def checkpoint(self, names: Iterable[str]) -> dict[str, Any]:
        """The attributes ``names`` that make this projection's state (what a snapshot
        keeps: :data:`projections.snapshots.STATES`)."""
        return {name: getattr(self, name) for name in names}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a :meth:`checkpoint` (decoded with the types of :attr:`STATE`)."""
        for name, value in state.items():
            setattr(self, name, value)

    def apply(self, record: Record) -> None:
        """Fold one record into this projection."""
        handler = self.handlers.get(type(record.data))
        if handler is not None:
            handler(self, record, record.data)

    def to_json(self) -> Any:
        """This projection's state as a msgspec Struct (or builtin) for JSON."""
        raise NotImplementedError
