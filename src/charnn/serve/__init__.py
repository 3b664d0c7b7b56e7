"""`charnn serve`: trained runs behind an OpenAI-compatible HTTP API, with a playground page.

The top layer beside lab/: it may import infer/ (the loaded run, sampling), models/ (states),
settings and errors, never train/ or the CLI. One module per story:

    config.py    ServeConfig: where it listens and every limit (no web stack: the CLI imports it)
    schemas.py   request/response bodies, the OpenAPI document's limits, errors in OpenAI's shape
    guard.py     ASGI middleware: API key and body size, before anything parses a request
    app.py       create_app: the routes, the checks beyond the schema, errors mapped to 4xx/5xx
    jobs.py      Sampling in, a Job of Outputs out: what the HTTP side and the engine share
    engine.py    continuous batching: one thread per model steps every stream in one batch
    replies.py   a job's outputs as one JSON body or as server-sent events
    run.py       serve() and background_server(): sockets, uvicorn, the exposure warning
    static/      the playground page

This file imports nothing, so `charnn.serve.config` loads without the [serve] extra.
"""
