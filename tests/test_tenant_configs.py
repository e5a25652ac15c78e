"""The serving process parses a tenant's configuration once per change, not once per request."""

from serving.tenant_configs import TenantConfigs


def test_configuration_is_parsed_once_and_reparsed_after_a_change(store):
    store.create_tenant("acme", {"ranking": {"content": 0.3}})
    configs = TenantConfigs(store)
    first = configs.get("acme")
    assert first.ranking.content == 0.3 and configs.get("acme") is first and configs.parsed == 1
    rule = {"type": "pin", "item_id": "p1", "position": 1}
    store.set_tenant_config("acme", {"ranking": {"content": 0.5}, "rules": [rule]})
    changed = configs.get("acme")
    assert changed.ranking.content == 0.5 and changed.parsed_rules[0].item_id == "p1" and configs.parsed == 2
    assert configs.get("acme") is changed and configs.parsed == 2


def test_an_unknown_tenant_gets_the_defaults(store):
    assert TenantConfigs(store).get("ghost").collab.candidates == 300
