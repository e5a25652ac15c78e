"""Retail media: sponsored products inside the same answers as the organic ones (issue 16).

* :mod:`.money`: amounts in integer micro-units;
* :mod:`.campaigns`: advertisers (principals inside a tenant) and their line items, validated;
* :mod:`.market`: who may enter a request's auction, each promoted product's relevance to it, and
  where the winners go in the list;
* :mod:`.auction`: the generalized second-price auction, a pure function;
* :mod:`.pacing`: probabilistic throttling of each line item along the tenant's traffic curve;
* :mod:`.tokens`: signed ``ad_id``\ s, so a click is checked without a write at serving time;
* :mod:`.report`: impressions, clicks, spend, attributed conversions and ROAS per line item and day.

The serving process keeps each tenant's market fresh and charges clicks (``serving/ads.py``); the
spend ledger's atomic charge lives in the CDP store (``charge_click``).
"""
