"""The admin listener and the Prometheus page on gevent."""
