"""Every packet gjproxy reads or writes, each defined once as a construct schema.

- ``schemas.jproxy``: the jProxy 3 handshake, login, frame envelope and tunnel messages
- ``schemas.keys``: the client key file and the server user file
- ``schemas.admin``: the admin ("Proxy SOCKSv5 configuration") protocol
- ``schemas.socks5``: SOCKS5 (RFC 1928) and user/password authentication (RFC 1929)
- ``schemas.socks4``: SOCKS4 and SOCKS4a (the CONNECT request and its reply)
- ``schemas.fast``: hot-path codecs derived from the jProxy schemas
- ``schemas.introspect``: the one walk over a schema that everything derived from them uses

``parse`` and ``build`` wrap construct so that every defect is a ``WireError``.
"""

from schemas.errors import WireError
from schemas.fields import build, parse

__all__ = ["WireError", "build", "parse"]
