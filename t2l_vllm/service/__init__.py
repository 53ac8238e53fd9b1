"""The adapter service: the process that turns descriptions into adapter folders for a deployment.

`client.py` is what API servers and the offline engine use; `server.py` runs in
the service process; `protocol.py` is the wire format between them.
"""
