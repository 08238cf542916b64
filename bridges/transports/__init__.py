"""Broker transports: the connection protocol (base), a registry by URL scheme, STOMP and AMQP."""
