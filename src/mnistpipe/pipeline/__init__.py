"""What each DVC stage does, as a function of its params: `mnistpipe.pipeline.<name>.run(params)`.

`stages/<name>.py` reads the params (train and evaluate with `load_and_pin()`, before torch
loads) and calls it; tests call the same functions in-process. fetch and validate are one
call each (`data.fetch.fetch_dataset`, `params.check_fits`) and have no module here.
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
