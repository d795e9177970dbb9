"""The monolith shape: retriever, generator and monitor stages in one process (``ragstream run monolith``)."""
