"""The ASGI middleware around every route, outermost first (wired in envd/app.py).

`state` publishes the per-request state (envd/rpc/context.py) and notices a
disconnect, `cors` answers preflights, `access_token` is the `X-Access-Token`
gate, `basic_auth` resolves the `Authorization: Basic` user.
"""
