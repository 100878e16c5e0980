"""Applications on board sockets: ``python -m twinstack.examples.http_server URL``."""
