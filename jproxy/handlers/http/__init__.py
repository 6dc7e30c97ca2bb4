"""HTTP on gevent: the HTTP proxy of the client's port."""
