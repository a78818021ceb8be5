"""Redemption codes: the plaintext format and the keyed hash codes are stored under, atomic
redemption with its brute-force limit, and code administration (batches, listing, disabling).

This is the package's face: the names other packages may use. No other package calls into
codes; handlers import its modules directly.
"""

__all__: list[str] = []
