"""Runtime assets and the local stack launcher (Kafka from Maven Central, embedded PostgreSQL)."""
