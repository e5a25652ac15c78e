"""``ad_id``: what a served ad says about itself, sealed, so that a click can be checked and charged
without the serving process having written anything when it served the ad, and so that nobody who
sees the answer (a browser, a competitor) can read the line item or the price.

An ad id is ``ad2.<sealed>``: the line item, which of its products, the price per click (micros),
when and on which placement it was served, encrypted and authenticated with AES-GCM (the
``cryptography`` package) under a key derived from the deployment's ads secret
(``LODESTAR_ADS_SECRET``, or one made once per data dir), with the tenant as associated data and a
random 96-bit nonce (so every served ad has its own id). An id that was never served (made up,
altered, another tenant's, another deployment's) fails authentication.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lodestar.errors import InvalidInput

PREFIX = "ad2"
PLACEMENT_CODES = {"recommendations": "r", "session": "s", "similar": "i", "search": "q"}
PLACEMENT_NAMES = {code: name for name, code in PLACEMENT_CODES.items()}
NONCE = 12


@dataclass(frozen=True)
class ServedAd:
    line_item: str
    product_index: int  # into the line item's products (a line item's products never change)
    price: int  # micros per click
    served_at: int  # epoch seconds
    placement: str


@lru_cache(maxsize=16)
def _cipher(secret: str) -> AESGCM:
    return AESGCM(hmac.new(secret.encode(), b"lodestar ad id v2", hashlib.sha256).digest())


def make_ad_id(secret: str, tenant: str, ad: ServedAd) -> str:
    body = json.dumps([ad.line_item, ad.product_index, ad.price, ad.served_at, PLACEMENT_CODES[ad.placement]],
                      separators=(",", ":")).encode()
    nonce = secrets.token_bytes(NONCE)
    sealed = nonce + _cipher(secret).encrypt(nonce, body, tenant.encode())
    return f"{PREFIX}.{base64.urlsafe_b64encode(sealed).rstrip(b'=').decode()}"


def open_ad_id(secret: str, tenant: str, ad_id: str) -> ServedAd | None:
    """The ad this tenant served under ``ad_id``, or ``None`` for anything else."""
    prefix, _, text = ad_id.partition(".")
    if prefix != PREFIX or not text or not text.isascii():
        return None
    try:
        sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        body = _cipher(secret).decrypt(sealed[:NONCE], sealed[NONCE:], tenant.encode())
        line_item, index, price, served_at, code = json.loads(body)
        return ServedAd(str(line_item), int(index), int(price), int(served_at), PLACEMENT_NAMES[code])
    except (InvalidTag, ValueError, TypeError, KeyError, binascii.Error):
        return None


def read_ad_id(secret: str, tenant: str, ad_id: str) -> ServedAd:
    """The ad this tenant served under ``ad_id``; :class:`InvalidInput` for an id it never served."""
    ad = open_ad_id(secret, tenant, ad_id)
    if ad is None:
        raise InvalidInput("ad_id: not an ad this shop served; send the ad_id of a sponsored item exactly as the "
                           "recommendation or search answer gave it", field="ad_id")
    return ad
