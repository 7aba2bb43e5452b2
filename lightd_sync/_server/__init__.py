"""
The server side of lightd_sync: the reference receiver, its stores and the HTTP serving.

Private: the public faces are :mod:`lightd_sync.receiver` and :mod:`lightd_sync.testing`.
Nothing here imports the engine: dependencies point from the client to the
shared model, never from the server to the client.
"""
