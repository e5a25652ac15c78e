"""What stands before a console password check: how many sign-ins an address may try, and how many
password checks run at once. One per app (per serving process)."""

from __future__ import annotations

import anyio
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

# Sign-in attempts from one address, whatever the account (guessing many accounts' passwords),
# counted before the check so that attempts sent side by side count too. Each account also slows
# down on its own failures (lodestar.accounts), in every process.
ATTEMPTS_PER_ADDRESS = parse("30/10 minutes")
CHECKS_AT_ONCE = 2  # each Argon2 check takes 64 MiB and tens of milliseconds, on purpose


class SignInGate:
    def __init__(self) -> None:
        self._attempts = MovingWindowRateLimiter(MemoryStorage())
        self._checks: anyio.CapacityLimiter | None = None

    def admit(self, address: str) -> bool:
        """Count an attempt from ``address``; ``False`` when it has used its attempts."""
        return self._attempts.hit(ATTEMPTS_PER_ADDRESS, address)

    @property
    def checks(self) -> anyio.CapacityLimiter:
        """The password checks' own worker-thread limit: sign-ins wait for it on the event loop,
        never holding one of the threads the API's handlers run on."""
        if self._checks is None:  # made on the event loop, at first use
            self._checks = anyio.CapacityLimiter(CHECKS_AT_ONCE)
        return self._checks
