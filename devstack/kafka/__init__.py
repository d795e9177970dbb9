"""Files for the devstack's Kafka broker: the Maven ``pom.xml`` that fetches its jars and its log4j2 config."""
