"""Everything ragstream does with Kafka, each concern once (DESIGN.md §3-4).

Modules:
    config: librdkafka properties of every client (workers, producers, group-less readers; SASL/SSL).
    faust_config: the same connection for the faust monitor (broker URLs, credentials).
    producer: the one producer wrapper (lazy client, bounded ``BufferError`` retry, poll after produce).
    reader: group-less range reads (assign at watermarks, read to the end, committed offsets).
    admin: broker check, topics.yaml applied, partition counts.
    offsets: in-order offset bookkeeping of the worker loop.
    loop: the worker loop (poll, bounded in flight, produce, store offsets after delivery, rebalance, shutdown).
"""
