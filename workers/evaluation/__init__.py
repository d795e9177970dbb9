"""Replay-and-evaluate: replay a topic range into a shadow topic set, run a shadow pipeline with another
configuration, compare the runs and gate on the result; and the dead-letter tools (``dlq``)."""
