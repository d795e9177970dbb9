"""The retriever: embeds queries, searches pgvector, fills the prompt template (DESIGN.md §1).

Modules: ``embedding`` (ML only), ``store`` (pgvector only), ``prompt`` and ``tokens`` (pure policy and
token counting), ``ingest`` (chunking and loading), ``app`` (Kafka wiring). Importing this package loads
none of them, so nothing heavy (torch) or connected happens at import time.
"""
