"""Operator tools behind `lifeops-mesh`: tail, request, health, dlq, trace, demo, asyncapi."""
