"""A Waldur stand-in: the offering-user REST API and event publishing through RabbitMQ."""
