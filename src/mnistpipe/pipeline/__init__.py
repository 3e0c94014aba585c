"""What each numerics-sensitive DVC stage does, as a function of its params.

`stages/<name>.py` pins the numerics mode (before torch loads) and then calls
`mnistpipe.pipeline.<name>.run(params)`; tests call the same functions in-process.
"""
