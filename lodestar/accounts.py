"""Console accounts: the people who sign in to the console with an email address and a password.

An account is an operator (every tenant) or a member of tenants with a role in each (``ROLES``:
viewer, editor, owner). Passwords are hashed with Argon2id by argon2-cffi (its defaults, RFC 9106's
low-memory profile): unlike API keys, a password is a low-entropy secret, so its hash must be slow.
Failed sign-ins are counted per account in the CDP store (so every serving process and restart sees
them): after ``FREE_FAILURES`` in a row, each further attempt waits twice as long as the one before
(capped at ``MAX_DELAY_S``) before the password is even checked. Addresses without an account are
counted the same way, in memory. The console runs at most two checks at once (each takes Argon2's
64 MiB and tens of milliseconds, on purpose).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from lodestar.cdp import OPERATOR_LOG, ROLES, CdpStore, audit_entry, require_tenant
from lodestar.errors import InvalidInput, NotFound

HASHER = PasswordHasher()
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
FREE_FAILURES = 5
MAX_DELAY_S = 15 * 60
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}$")


@cache
def _dummy_hash() -> str:
    """Checked when the account does not exist, so an unknown address costs as much time as a known
    one; made at the first sign-in, not at import (a hash takes 64 MiB and tens of milliseconds)."""
    return HASHER.hash(secrets.token_urlsafe(16))


def check_email(email: Any) -> str:
    """The address as stored (trimmed, lowercase), or an error saying what a valid one looks like."""
    text = email.strip().lower() if isinstance(email, str) else ""
    if not _EMAIL.match(text):
        raise InvalidInput(f"email: {email!r} is not an email address (name@example.com)", field="email")
    return text


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(f"password: use {MIN_PASSWORD} to {MAX_PASSWORD} characters", field="password")
    return password


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role: must be one of {', '.join(ROLES)}, got {role!r}", field="role")
    return role


def generated_password() -> str:
    """A password for a new account when none is given (shown once)."""
    return secrets.token_urlsafe(15)


def role_at_least(role: str | None, needed: str) -> bool:
    return role is not None and ROLES.index(role) >= ROLES.index(needed)


class SignInRefused(Exception):
    """A sign-in that was not let through: a wrong address or password (one message for both, so
    that the console does not tell who has an account), or one tried too soon after failures."""

    def __init__(self, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def wait_left(account: dict[str, Any], now: float) -> float:
    """Seconds the account must still wait before its next sign-in attempt is checked."""
    failed = account.get("failed_signins") or 0
    if failed < FREE_FAILURES or not account.get("last_failed_at"):
        return 0.0
    delay = min(2.0 ** (failed - FREE_FAILURES), MAX_DELAY_S)
    return max(0.0, account["last_failed_at"] + delay - now)


class _UnknownFailures:
    """Failed sign-ins of addresses that have no account, counted in memory (at most ``size``
    addresses, the oldest forgotten first), so that an unknown address is slowed down exactly as a
    known one is: the answers never tell who has an account."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._seen: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, email: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._seen.get(email, {}))

    def fail(self, email: str, now: float) -> None:
        with self._lock:
            entry = self._seen.pop(email, {"failed_signins": 0})
            self._seen[email] = {"failed_signins": entry["failed_signins"] + 1, "last_failed_at": now}
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)


_unknown = _UnknownFailures()


def authenticate(store: CdpStore, email: str, password: str, now: float | None = None) -> dict[str, Any]:
    """The account ``email`` signs in to with ``password``; :class:`SignInRefused` otherwise.

    The attempt counts as a failure before the password is checked (a right one clears it after):
    sign-ins sent side by side cannot all slip through before the first failure is counted."""
    now = time.time() if now is None else now
    wrong = SignInRefused("the email address or the password is not right; check both and try again")
    try:
        email = check_email(email)
    except InvalidInput:
        raise wrong from None
    account = store.get_account(email)
    left = wait_left(account if account is not None else _unknown.get(email), now)
    if left > 0:
        raise SignInRefused(f"too many failed sign-ins for this account; try again in {int(left) + 1} s",
                            retry_after=int(left) + 1)
    if account is None:
        _unknown.fail(email, now)
    else:
        store.record_signin(email, False)
    try:
        HASHER.verify(account["password_hash"] if account else _dummy_hash(), password or "")
    except (VerificationError, InvalidHashError):
        raise wrong from None
    if account is None:  # the dummy hash matched: impossible in practice, refused all the same
        raise wrong
    store.record_signin(email, True)
    if HASHER.check_needs_rehash(account["password_hash"]):
        account = {**account, "password_hash": HASHER.hash(password)}
        store.put_account(email, account["password_hash"], account["operator"])
    return account


@dataclass(frozen=True)
class NewAccount:
    email: str
    password: str | None  # set when it was generated here (shown once)


def ensure_account(store: CdpStore, email: str, password: str | None, actor: str, operator: bool | None = None
                   ) -> NewAccount:
    """Create the account (with ``password``, or a generated one returned once), or, when it exists,
    set its password when one is given; ``operator`` grants or takes the operator role (audited in
    the operators' log)."""
    email = check_email(email)
    existing = store.get_account(email)
    generated = None
    if password is None and existing is None:
        password = generated = generated_password()
    was_operator = bool(existing and existing["operator"])
    now_operator = was_operator if operator is None else operator
    if password is not None:
        store.put_account(email, HASHER.hash(check_password(password)), now_operator)
    elif now_operator != was_operator:
        store.put_account(email, existing["password_hash"], now_operator)
    if existing is None or now_operator != was_operator:
        store.append_audit(OPERATOR_LOG, audit_entry(actor, "account.create" if existing is None else "account.operator",
                                                     email, None if existing is None else {"operator": was_operator},
                                                     {"operator": now_operator}))
    elif password is not None:  # recorded, never the password or its hash
        store.append_audit(OPERATOR_LOG, audit_entry(actor, "account.password", email))
    return NewAccount(email, generated)


def add_member(store: CdpStore, tenant: str, email: str, role: str, actor: str) -> None:
    """Give the account ``role`` in the tenant (audited as ``member.add`` or ``member.role``)."""
    email, role = check_email(email), check_role(role)
    require_tenant(store, tenant)
    before = next((m["role"] for m in store.list_members(tenant) if m["email"] == email), None)
    store.set_member(tenant, email, role)
    if before != role:
        store.append_audit(tenant, audit_entry(actor, "member.add" if before is None else "member.role", email,
                                               None if before is None else {"role": before}, {"role": role}))


def remove_member(store: CdpStore, tenant: str, email: str, actor: str) -> None:
    email = check_email(email)
    before = next((m["role"] for m in store.list_members(tenant) if m["email"] == email), None)
    if before is None or not store.remove_member(tenant, email):
        raise NotFound(f"{email} is not a member of tenant {tenant!r}; list them with `lodestar members list --tenant {tenant}`")
    store.append_audit(tenant, audit_entry(actor, "member.remove", email, {"role": before}, None))
