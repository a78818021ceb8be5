"""Test helpers: the local stack as a subprocess (stack.py) and embedded tables."""
