"""Refusal penalties: a client that keeps sending requests the server refuses gets its refusals answered
later and later, so an abuser's own request loop slows down instead of the server's event loop.

Each refused request (a client error: bad framing, bad auth, bad payload, over a cap or a quota, or over its
own share of the memory budget) is a *strike* against its owner (the device of its key, else its client
address). Strikes decay exponentially (`half_life_s`); the first `free` are free, after that every refusal
waits `step_s` more, up to `max_s`, before it is sent. The wait is an `asyncio.sleep`: it costs the server no
CPU, and it never delays a request that succeeds -- so a well-behaved device behind the same address as an
abuser is never slowed, and one that errs now and then never notices. The table is bounded (`max_owners`,
least recently struck dropped first), so the cost of tracking is bounded too.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

# Statuses a well-behaved client does not cause: a strike each (503 counts only when it is the owner's own
# share of the memory budget that is full; see edgeae.serve.http).
STRIKE_STATUSES = frozenset({400, 401, 403, 405, 408, 409, 411, 413, 415, 429})


class Penalties:
    """Per-owner strikes with exponential decay -> the delay to add to the owner's next refusal."""

    def __init__(self, free: int = 8, step_s: float = 0.05, max_s: float = 1.0, half_life_s: float = 30.0,
                 max_owners: int = 65536, clock: Callable[[], float] = time.monotonic) -> None:
        if free < 0 or step_s < 0 or max_s < 0 or half_life_s <= 0 or max_owners < 1:
            raise ValueError("penalties need free >= 0, step_s >= 0, max_s >= 0, half_life_s > 0, max_owners >= 1")
        self.free, self.step_s, self.max_s = free, step_s, max_s
        self.decay = math.log(2.0) / half_life_s
        self.max_owners = max_owners
        self.clock = clock
        self._strikes: OrderedDict[str, tuple[float, float]] = OrderedDict()  # owner -> (strikes, at)

    @property
    def enabled(self) -> bool:
        return self.max_s > 0 and self.step_s > 0

    def strikes(self, owner: str) -> float:
        """The owner's strikes now (decayed)."""
        s, at = self._strikes.get(owner, (0.0, 0.0))
        return s * math.exp(-self.decay * max(0.0, self.clock() - at))

    def strike(self, owner: str) -> float:
        """Count one refusal against `owner`; returns the seconds to wait before answering it."""
        if not self.enabled:
            return 0.0
        s = self.strikes(owner) + 1.0
        self._strikes[owner] = (s, self.clock())
        self._strikes.move_to_end(owner)
        while len(self._strikes) > self.max_owners:
            self._strikes.popitem(last=False)
        return min(self.max_s, self.step_s * max(0.0, s - self.free))

    def __len__(self) -> int:
        return len(self._strikes)
