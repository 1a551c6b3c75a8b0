"""Reconnect delays: exponential with a cap, reset after a source has delivered frames again."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (0-based): ``min(initial_s * factor**n, max_s)``."""

    initial_s: float = 0.5
    max_s: float = 10.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < self.initial_s or self.factor < 1:
            raise ValueError(f"backoff needs 0 <= initial_s <= max_s and factor >= 1, got {self}")

    def delay(self, attempt: int) -> float:
        return min(self.initial_s * self.factor ** max(0, attempt), self.max_s)
