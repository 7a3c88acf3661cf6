"""LifeOps Mesh runtime: contract, codecs, transport, request/response, inbox, outbox, store."""

__version__ = "0.1.0"
