"""Event schemas and the topic registry: the single source of truth for what flows on Kafka.

This package imports no Kafka, Faust, psycopg or FastAPI code, so every process (and gateway
vendors) can depend on it.
"""
