"""ragstream: streaming RAG inference on Apache Kafka.

Import package of the ``ragstream`` distribution. Sub-packages: ``retriever`` (CPU: embed, search, prompt),
``generator`` (LLM calls to a TGI-compatible server), ``monitor`` (faust app: traces and metrics).
"""

__version__ = "0.1.0"
