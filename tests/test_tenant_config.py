import pytest

from lodestar.errors import InvalidInput
from lodestar.tenant_config import effective_config, validate_config


def test_effective_config_overlays_nested_sections():
    config = effective_config({"collab": {"ease_lambda": 50}, "event_weights": {"view": 0.5}})
    assert config.collab.ease_lambda == 50 and config.collab.factors == 64
    assert config.event_weights["view"] == 0.5 and config.event_weights["purchase"] == 8.0


@pytest.mark.parametrize("config, message", [
    ({"colab": {}}, "unknown configuration keys: colab"),
    ({"event_weights": {"hover": 1}}, "event_weights.hover: unknown event type"),
    ({"event_weights": {"view": "high"}}, "event_weights.view must be a number"),
    ({"collab": {"ease_lambda": -1}}, "collab.ease_lambda must be a number >= 0"),
    ({"ranking": {"colab": 1}}, "ranking.colab: unknown key"),
    ({"evaluation": {"test_fraction": 1.5}}, "evaluation.test_fraction must be between 0 and 1"),
    ({"profile_attributes": "interests"}, "profile_attributes must be a list"),
])
def test_invalid_configuration_is_refused_with_the_key(config, message):
    with pytest.raises(InvalidInput, match=message):
        validate_config(config)


def test_valid_configuration_passes():
    config = {"event_weights": {"dislike": -8}, "ranking": {"content": 0.2}, "profile_attributes": ["likes"]}
    assert validate_config(config) is config
