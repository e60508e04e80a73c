"""A stand-in for the outside world the services act on (mail server, warehouse,
partners), recording what happened so the demo can print it and tests can check it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class World:
    """What the services did, in order, with idempotent effects by key."""

    lines: list[str] = field(default_factory=list)
    effects: dict[str, str] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    echo: bool = False

    def log(self, service: str, text: str) -> str:
        line = f"[{service}] {text}"
        self.lines.append(line)
        if self.echo:
            print(line)
        return line

    def once(self, key: str, effect: Callable[[], str]) -> str:
        """Apply ``effect`` once per ``key``; a repeat returns the first result."""
        if key not in self.effects:
            self.effects[key] = effect()
        return self.effects[key]

    def fail(self, what: str, times: int = 1) -> None:
        """Make the next ``times`` calls of ``what`` fail."""
        self.failures[what] = times

    def check(self, what: str) -> None:
        """Raise if ``what`` is set to fail."""
        left = self.failures.get(what, 0)
        if left:
            self.failures[what] = left - 1
            raise ConnectionError(f"{what} is unavailable")
