"""Kafka for every usync process: client options, topics, producers, consumer groups, readers."""
