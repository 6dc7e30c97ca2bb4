"""The Java 3.0 implementation's recorded key files and the user-name vectors, for the key tests
of every layer."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from jproxy.tunnel.keys import load_client_key

VECTORS = Path(__file__).parent / "vectors"
JAVA = VECTORS / "java-3.0"
JAVA_HASH = "E6FAE591B1497266DDF1C93343F58E9464F9A1BC144B169FE4DF18FF2A4363D3"
"""The login hash of the recorded Java client key, and so its user file's name."""
JAVA_KEY = load_client_key(JAVA / "client-key.dat")
USER_NAMES = json.loads((VECTORS / "user-names.json").read_text())


def file_mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)
