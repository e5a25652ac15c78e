"""Each connector's mapping, as a tenant configures it (the ``connectors`` key of the configuration).

The defaults follow each source's published specification: which source event becomes which
Lodestar event type (a name mapped to ``null`` is skipped, like a name not listed), which source
fields become item attributes, and where the user id comes from. A tenant overrides any of it key by
key, for example::

    lodestar tenants config shop --set '{"connectors": {"ga4": {"events": {"view_item_list": null,
        "view_promotion": "impression"}, "user_id_fields": ["user_id"]}}}'

This module is a leaf (no import of the rest of Lodestar but records' event types and errors), so
that the tenant configuration can take its defaults from here.
"""

from __future__ import annotations

from typing import Any

from lodestar.errors import InvalidInput
from lodestar.records import EVENT_TYPES

FORMATS = ("ga4", "xdm", "segment", "google-merchant")
# The configuration key of each format (a key cannot hold a dash in every tool that reads it).
CONFIG_KEYS = {"ga4": "ga4", "xdm": "xdm", "segment": "segment", "google-merchant": "google_merchant"}

DEFAULTS: dict[str, dict[str, Any]] = {
    # GA4's recommended e-commerce events (developers.google.com/analytics/devguides/collection/ga4/reference/events).
    "ga4": {
        "events": {
            "view_item": "view",
            "select_item": "click",
            "add_to_cart": "add_to_cart",
            "add_to_wishlist": "like",
            "purchase": "purchase",
            "view_item_list": "impression",
            "begin_checkout": None,
            "remove_from_cart": None,
            "refund": None,
        },
        # The first of these columns that a row has is its user: the signed-in id, else the device's.
        "user_id_fields": ["user_id", "user_pseudo_id"],
        # items[] fields kept as item attributes (item_id, item_name and item_category..5 always
        # become the id, the title and the categories). The attribute name is the value.
        "item_fields": {"item_brand": "brand", "item_variant": "variant", "price": "price"},
        # user_properties (key -> value) become user profile attributes.
        "user_properties": True,
    },
    # Adobe XDM ExperienceEvent eventType values for commerce (experienceleague.adobe.com, XDM "Commerce details").
    "xdm": {
        "events": {
            "commerce.productViews": "view",
            "commerce.productListAdds": "add_to_cart",
            "commerce.saveForLaters": "like",
            "commerce.purchases": "purchase",
            "commerce.productListRemovals": None,
            "commerce.productListViews": None,
            "commerce.checkouts": None,
        },
        # The identityMap namespace whose id is the user (ECID, CRMID, Email, ...); null: the identity
        # marked primary.
        "identity_namespace": None,
        # productListItems[] fields kept as item attributes (SKU, name and productCategories always
        # become the id, the title and the categories; the unit price is priceTotal / quantity).
        "item_fields": {"currencyCode": "currency"},
    },
    # Segment's E-commerce Spec v2 (segment.com/docs/connections/spec/ecommerce/v2/); RudderStack and
    # Jitsu send the same names. Names match without regard to case, spaces, dashes or underscores.
    "segment": {
        "events": {
            "Product Viewed": "view",
            "Product Clicked": "click",
            "Product Added": "add_to_cart",
            "Product Added to Wishlist": "like",
            "Order Completed": "purchase",
            "Product List Viewed": "impression",
            "Product Reviewed": "rating",
            "Product Removed": None,
            "Checkout Started": None,
        },
        # A message without userId counts for its anonymousId as the user (false: skipped).
        "anonymous_users": True,
        # product fields kept as item attributes (product_id or sku, name and category always
        # become the id, the title and the categories).
        "item_fields": {"brand": "brand", "variant": "variant", "price": "price", "image_url": "image_url"},
        # identify traits not kept in the user's profile: contact details are not taste.
        "exclude_traits": ["email", "phone", "address", "name", "firstName", "lastName", "birthday", "username"],
    },
    # Google Merchant Center product data specification (support.google.com/merchants/answer/7052112).
    "google_merchant": {
        # Feed attributes kept as item attributes (id, title, description, product_type, availability
        # and price always become the id, title, description, categories, availability and price).
        "attributes": {
            "brand": "brand", "google_product_category": "google_product_category", "link": "link",
            "image_link": "image_link", "sale_price": "sale_price", "condition": "condition", "color": "color",
            "size": "size", "gender": "gender", "age_group": "age_group", "gtin": "gtin", "mpn": "mpn",
            "material": "material", "custom_label_0": "custom_label_0", "custom_label_1": "custom_label_1",
        },
        # The categories: the levels of product_type ("Home > Kitchen > Knives": three), and those of
        # google_product_category when a row has no product_type.
        "categories_from": ["product_type", "google_product_category"],
    },
}

_SHAPES: dict[str, dict[str, str]] = {
    "ga4": {"events": "events", "user_id_fields": "names", "item_fields": "fields", "user_properties": "bool"},
    "xdm": {"events": "events", "identity_namespace": "name_or_null", "item_fields": "fields"},
    "segment": {"events": "events", "anonymous_users": "bool", "item_fields": "fields", "exclude_traits": "names"},
    "google_merchant": {"attributes": "fields", "categories_from": "names"},
}
_MAX_ENTRIES = 200


def validate(values: Any) -> None:
    """Check a tenant's ``connectors`` configuration, naming the first field that is wrong."""
    if not isinstance(values, dict):
        raise InvalidInput("connectors must be an object with any of " + ", ".join(DEFAULTS), field="connectors")
    for key, section in values.items():
        if key not in DEFAULTS:
            raise InvalidInput(f"connectors.{key}: unknown connector; known: {', '.join(DEFAULTS)}",
                               field=f"connectors.{key}")
        if not isinstance(section, dict):
            raise InvalidInput(f"connectors.{key} must be an object", field=f"connectors.{key}")
        for name, value in section.items():
            where = f"connectors.{key}.{name}"
            shape = _SHAPES[key].get(name)
            if shape is None:
                raise InvalidInput(f"{where}: unknown key; known: {', '.join(_SHAPES[key])}", field=where)
            _check(shape, value, where)


def _check(shape: str, value: Any, where: str) -> None:
    if shape == "bool":
        if not isinstance(value, bool):
            raise InvalidInput(f"{where}: true or false", field=where)
    elif shape == "name_or_null":
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise InvalidInput(f"{where}: a name, or null", field=where)
    elif shape == "names":
        if not isinstance(value, list) or len(value) > _MAX_ENTRIES or not all(isinstance(v, str) and v for v in value):
            raise InvalidInput(f"{where}: a list of names", field=where)
    else:
        if not isinstance(value, dict) or len(value) > _MAX_ENTRIES:
            raise InvalidInput(f"{where}: an object of source name to {'event type' if shape == 'events' else 'attribute'} "
                               f"(at most {_MAX_ENTRIES})", field=where)
        for source, target in value.items():
            if target is None:
                continue  # null: not imported
            if shape == "events" and target not in EVENT_TYPES:
                raise InvalidInput(f"{where}.{source}: one of {', '.join(EVENT_TYPES)}, or null to skip it",
                                   field=f"{where}.{source}")
            if shape == "fields" and not (isinstance(target, str) and target.strip()):
                raise InvalidInput(f"{where}.{source}: an attribute name, or null to leave the field out",
                                   field=f"{where}.{source}")


def event_key(name: str) -> str:
    """Segment event names compared as people write them: case, spaces, dashes and underscores aside."""
    return "".join(name.lower().replace("-", " ").replace("_", " ").split())
