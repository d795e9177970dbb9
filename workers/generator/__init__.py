"""Generator worker: consumes prompts, calls the TGI-compatible LLM server, produces responses."""
