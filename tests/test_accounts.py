"""Console accounts without HTTP: addresses and passwords, the sign-in throttle, roles, and
``lodestar members add|list|remove``."""

from __future__ import annotations

import io
import json

import pytest

from lodestar import cli
from lodestar.accounts import (
    FREE_FAILURES,
    MAX_DELAY_S,
    SignInRefused,
    add_member,
    authenticate,
    check_email,
    check_password,
    ensure_account,
    remove_member,
    role_at_least,
    wait_left,
)
from lodestar.cdp import OPERATOR_LOG
from lodestar.errors import InvalidInput, NotFound

PASSWORD = "a long enough password"


def test_addresses_are_trimmed_and_lowercased_and_passwords_have_a_minimum():
    assert check_email("  Ann@Example.COM ") == "ann@example.com"
    for bad in ("ann", "ann@", "@example.com", "a b@example.com", None, 5):
        with pytest.raises(InvalidInput, match="email"):
            check_email(bad)
    with pytest.raises(InvalidInput, match="12 to 1024 characters"):
        check_password("short")
    assert check_password("x" * 12) == "x" * 12


def test_the_wait_doubles_after_the_free_failures_up_to_its_cap():
    at = 1000.0
    waits = [wait_left({"failed_signins": n, "last_failed_at": at}, at) for n in range(FREE_FAILURES + 12)]
    assert waits[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert waits[FREE_FAILURES:FREE_FAILURES + 4] == [1.0, 2.0, 4.0, 8.0]
    assert max(waits) == MAX_DELAY_S
    assert wait_left({"failed_signins": 8, "last_failed_at": at}, at + 8.0) == 0.0  # waited enough


def test_sign_in_refuses_alike_counts_failures_and_resets_them(store):
    ensure_account(store, "ann@example.com", PASSWORD, "test")
    with pytest.raises(SignInRefused) as unknown:
        authenticate(store, "nobody@example.com", PASSWORD)
    with pytest.raises(SignInRefused) as wrong:
        authenticate(store, "ANN@example.com", "not the password")
    assert str(unknown.value) == str(wrong.value) and not wrong.value.retry_after
    assert store.get_account("ann@example.com")["failed_signins"] == 1
    assert authenticate(store, "ann@example.com", PASSWORD)["email"] == "ann@example.com"
    assert store.get_account("ann@example.com")["failed_signins"] == 0
    for _ in range(FREE_FAILURES):
        with pytest.raises(SignInRefused):
            authenticate(store, "ann@example.com", "wrong again!!")
    with pytest.raises(SignInRefused) as throttled:
        authenticate(store, "ann@example.com", PASSWORD)
    assert throttled.value.retry_after >= 1 and "try again in" in str(throttled.value)
    later = store.get_account("ann@example.com")["last_failed_at"] + 2
    assert authenticate(store, "ann@example.com", PASSWORD, now=later)["email"] == "ann@example.com"


def test_roles_rank_and_membership_changes_are_audited(store):
    assert role_at_least("owner", "editor") and role_at_least("editor", "editor")
    assert not role_at_least("viewer", "editor") and not role_at_least(None, "viewer")
    store.create_tenant("acme")
    made = ensure_account(store, "bob@example.com", None, "test")
    assert made.password and len(made.password) >= 16  # generated, shown once
    add_member(store, "acme", "bob@example.com", "viewer", "test")
    add_member(store, "acme", "bob@example.com", "editor", "test")
    add_member(store, "acme", "bob@example.com", "editor", "test")  # no change: not audited again
    with pytest.raises(InvalidInput, match="role"):
        add_member(store, "acme", "bob@example.com", "admin", "test")
    remove_member(store, "acme", "bob@example.com", "test")
    with pytest.raises(NotFound):
        remove_member(store, "acme", "bob@example.com", "test")
    actions = [(e["action"], e["before"], e["after"]) for e in reversed(store.read_audit("acme"))]
    assert actions == [("member.add", None, {"role": "viewer"}), ("member.role", {"role": "viewer"}, {"role": "editor"}),
                       ("member.remove", {"role": "editor"}, None)]
    assert [e["action"] for e in store.read_audit(OPERATOR_LOG)] == ["account.create"]


def test_the_members_cli_adds_lists_and_removes(settings, monkeypatch, capsys):
    monkeypatch.setenv("LODESTAR_DATA_DIR", str(settings.data_dir))
    assert cli.main(["tenants", "create", "acme"]) == 0
    assert cli.main(["members", "add", "ann@example.com", "--tenant", "acme", "--role", "owner"]) == 0
    out = capsys.readouterr().out
    assert "ann@example.com is owner of tenant 'acme'" in out and "Password (shown once" in out
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PASSWORD}\n"))
    assert cli.main(["members", "add", "root@example.com", "--operator", "--password-stdin"]) == 0
    assert "Password" not in capsys.readouterr().out  # given, not generated: not printed
    assert cli.main(["members", "list", "--json"]) == 0
    rows = {r["email"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ann@example.com"]["roles"] == {"acme": "owner"} and rows["root@example.com"]["operator"] is True
    assert cli.main(["members", "add", "x@example.com"]) == 2  # neither a tenant nor --operator
    assert "give --tenant NAME" in capsys.readouterr().err
    assert cli.main(["members", "remove", "ann@example.com", "--tenant", "acme"]) == 0
    assert cli.main(["members", "remove", "root@example.com", "--operator"]) == 0
    capsys.readouterr()
    assert cli.main(["members", "list", "--json"]) == 0
    rows = {r["email"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ann@example.com"]["roles"] == {} and rows["root@example.com"]["operator"] is False
