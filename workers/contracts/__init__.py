"""What the parts of ragstream agree on, with no I/O: wire models (``messages``), their serialization (``serde``),
the exception root and its classes (``errors``), and the ``topics.yaml`` model (``topics``)."""
