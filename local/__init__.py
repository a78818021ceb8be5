"""The local stack: the template's API, functions, tables and queues on one machine.

Run it with ``python -m local`` (see local/README.md). Kept free of imports: every worker
process imports this package first, and a function must see nothing of the stack.
"""
