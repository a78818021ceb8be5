"""Payments: top-up orders (the server-side quote and checkout), the providers (Stripe, EPay,
Creem, Waffo), webhook intake onto the credit queue, and crediting off it, exactly once.

This is the package's face: the names other packages may use. No other package calls into
payments yet; handlers import its modules directly. Keep this file free of imports, so that a
handler importing one module (the webhook intake, say) does not pay for the others.
"""

__all__: list[str] = []
