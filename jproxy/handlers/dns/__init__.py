"""Name resolution on gevent: the system resolver and DNS over HTTPS."""
