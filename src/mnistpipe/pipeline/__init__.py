"""What each numerics-sensitive DVC stage does, as a function of its params.

`stages/<name>.py` calls `load_and_pin()` (before torch loads) and then
`mnistpipe.pipeline.<name>.run(params)`; tests call the same functions in-process.
"""

from __future__ import annotations

from ..numerics import pin
from ..params import Params, load_params


def load_and_pin(path: str = "params.yaml") -> Params:
    """Read and validate params.yaml, pin its `numerics` mode, and return the params.

    A stage calls this first: the math libraries read their code paths as torch loads."""
    params = load_params(path)
    pin(params.numerics)
    return params
