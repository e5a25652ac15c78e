"""Retail media: sponsored products inside the same answers as the organic ones.

Built so far (issue 16, part 1, in progress): money in integer micro-units (:mod:`.money`), the
auction as a pure function (:mod:`.auction`), pacing (:mod:`.pacing`), advertisers and their line
items (:mod:`.campaigns`), and the spend ledger's atomic click charge in the CDP store. Not yet:
the auction inside requests, sponsored items in responses, charging clicks from events.
"""
