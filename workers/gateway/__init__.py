"""The OpenAI-compatible HTTP front: Requests to Kafka, token events and answers back, a chat page."""
