"""The domain of the quota and top-up backend: one module per concept.

Handlers in functions/ stay thin: they parse and authorise an event, call one function of
this package and map its result (or its DomainError) to a response.

Import time is every cold start's (bench/cold_start.py), so immutable records are
NamedTuples (Python 3.12 builds a frozen dataclass in ~0.5 ms, it execs each generated
method; a NamedTuple in ~0.1 ms), dataclasses only where a record is mutable or validates
itself; and the modules of pydantic models do without `from __future__ import annotations`
(pydantic would evaluate each string annotation, ~40% of building a model class).
"""

from billing import init_phase

init_phase.begin()
