"""devstack: the local stack (Kafka, PostgreSQL + pgvector, TGI-compatible LLM server) for development and tests."""

from devstack.stack import Stack, StackConfig, StackError

__all__ = ["Stack", "StackConfig", "StackError"]
