"""``ad_id``: what a served ad says about itself, signed, so that a click can be checked and charged
without the serving process having written anything when it served the ad.

An ad id is ``ad1.<payload>.<signature>``: the payload (base64url JSON) holds the line item, which
of its products, the price per click (micros), when and on which placement it was served, and a
random nonce (so every served ad has its own id); the signature is HMAC-SHA256 over the tenant and
the payload with the deployment's ads secret (``LODESTAR_ADS_SECRET``, or one made once per data
dir). An id that was never served (made up, altered, another tenant's) fails the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from lodestar.errors import InvalidInput

PREFIX = "ad1"
PLACEMENT_CODES = {"recommendations": "r", "session": "s", "similar": "i", "search": "q"}
PLACEMENT_NAMES = {code: name for name, code in PLACEMENT_CODES.items()}
MAX_LENGTH = 256  # an id, like every other


@dataclass(frozen=True)
class ServedAd:
    line_item: str
    product_index: int  # into the line item's products (a line item's products never change)
    price: int  # micros per click
    served_at: int  # epoch seconds
    placement: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, tenant: str, payload: str) -> str:
    mac = hmac.new(secret.encode(), f"{tenant}\x00{payload}".encode(), hashlib.sha256).digest()
    return _b64(mac[:16])


def make_ad_id(secret: str, tenant: str, ad: ServedAd) -> str:
    body = json.dumps([ad.line_item, ad.product_index, ad.price, ad.served_at, PLACEMENT_CODES[ad.placement],
                       _b64(secrets.token_bytes(6))], separators=(",", ":"))
    payload = _b64(body.encode())
    return f"{PREFIX}.{payload}.{_signature(secret, tenant, payload)}"


def decode_unverified(ad_id: str) -> ServedAd | None:
    """The ad an id names, without checking its signature (for ids already checked when they were
    accepted, such as those in a user's stored events); ``None`` for anything else."""
    try:
        prefix, payload, _ = ad_id.split(".")
        line_item, index, price, served_at, code, _nonce = json.loads(_unb64(payload))
        if prefix != PREFIX or code not in PLACEMENT_NAMES:
            return None
        return ServedAd(str(line_item), int(index), int(price), int(served_at), PLACEMENT_NAMES[code])
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


def read_ad_id(secret: str, tenant: str, ad_id: str) -> ServedAd:
    """The ad this tenant served under ``ad_id``; :class:`InvalidInput` for an id it never served."""
    parts = ad_id.split(".")
    if len(parts) == 3 and parts[0] == PREFIX and hmac.compare_digest(
            parts[2], _signature(secret, tenant, parts[1])):
        ad = decode_unverified(ad_id)
        if ad is not None:
            return ad
    raise InvalidInput("ad_id: not an ad this shop served; send the ad_id of a sponsored item exactly as the "
                       "recommendation or search answer gave it", field="ad_id")
