"""usync bridges: relays from Waldur's RabbitMQ (STOMP, web-STOMP, AMQP) into Kafka."""
