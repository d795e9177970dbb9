"""A server that speaks Hugging Face text-generation-inference's HTTP API (``python -m devstack.tgi``)."""
