"""Retail media: sponsored products inside the same answers as the organic ones.

Built so far (issue 16, part 1, in progress): money in integer micro-units (:mod:`.money`), the
auction as a pure function (:mod:`.auction`), pacing (:mod:`.pacing`), and the spend ledger's atomic
charges in the CDP store. Not yet: advertisers' API and keys, campaigns over HTTP, serving ads in
responses, tracking events with ``ad_id``.
"""
