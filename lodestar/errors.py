"""Domain errors. Each says what was wrong and what to do; HTTP and CLI map them in one place."""


class LodestarError(Exception):
    """Base class for errors a user can meet."""


class NotFound(LodestarError):
    """A tenant, item, user or index version does not exist."""


class Conflict(LodestarError):
    """The request clashes with existing state (for example a tenant name already taken)."""


class Forbidden(LodestarError):
    """An action the caller's role or key may not take (for example a tenant setting its own quotas)."""


class InvalidInput(LodestarError):
    """Input that does not fit the data model or the parameters of a call.

    ``field`` names the offending field when one is to blame (``filter.attributes.price.gte``), for
    per-field errors in API answers; ``row`` optionally carries the raw input that was refused, for
    reject files.
    """

    def __init__(self, message: str, row: object = None, field: str | None = None) -> None:
        super().__init__(message)
        self.row = row
        self.field = field


class IndexNotReady(LodestarError):
    """No published index version exists yet for a tenant."""


class UnknownTenant(NotFound, InvalidInput):
    """A tenant that does not exist (or was deleted): not found to the API (404), and an invalid
    argument to a command or an import that names it."""


class IndexEngineError(LodestarError):
    """The vector engine failed on a query (for example a panic inside Qdrant Edge's native code).
    The message is for the log; users get a generic error."""


class QuotaExceeded(LodestarError):
    """A request beyond a quota of its tenant or key (lodestar.tenant_config.QuotaSettings): answered
    429 with ``Retry-After`` (``retry_after_s``), nothing of it done."""

    def __init__(self, message: str, retry_after_s: int, quota: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.quota = quota
