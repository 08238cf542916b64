"""Adapters: the ports implemented over faust, Kafka (aiokafka), Waldur HTTP (httpx on aiohttp) and memory."""
