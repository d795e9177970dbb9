"""One adapter per outside service, behind the interfaces the stages use (``interfaces``).

Modules:
    interfaces: protocols and result types the stages depend on (no I/O library).
    embedding: the sentence-transformers query/document embedder.
    tokenizers: local tokenizers (HF ``tokenizers``) and an LRU token-count cache.
    llm_server: the one client of a TGI / OpenAI-compatible server (limits, token counts, generation).
    llm_discovery: what an LLM server offers (health, model, limits, API, tokenize route), found at start-up.
    llm_text: what every LLM adapter does to text (stop sequences, finish reasons, system role, error bodies).
    llm_engine: an engine of the devstack LLM server hosted in this process (the monolith's option).
    concurrency: bounds on LLM calls in flight (fixed or adaptive).
    pgvector: the chunk store (PostgreSQL + pgvector: HNSW search, upserts).
    postgres: pools and connections for every PostgreSQL user.
    answers: the generator's answer store (effectively-once).
    traces: the monitor's trace table.
"""
