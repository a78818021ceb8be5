"""Usage: pricing (tokens x model ratio x group ratio), metering (charge, reserve, settle,
release, in batches aggregated per user) and the usage history.

This is the package's face: the names other packages may use. No other package calls into
usage; handlers import its modules directly.
"""

__all__: list[str] = []
