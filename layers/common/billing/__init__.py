"""The domain of the quota and top-up backend: one module per concept.

Handlers in functions/ stay thin: they parse and authorise an event, call one function of
this package and map its result (or its DomainError) to a response.
"""
