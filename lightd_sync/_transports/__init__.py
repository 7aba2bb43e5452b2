"""Transports: how an update leaves this process. They know nothing of the engine."""
