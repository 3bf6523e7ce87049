"""Built-in environments: the interpreters a version's code can run on.

Every version's environment is a virtualenv of the server's own interpreter; the catalogue
names it the way users of such platforms expect (`python3-11`).
"""

from __future__ import annotations

import sys

HOST = f"python{sys.version_info.major}-{sys.version_info.minor}"
DEFAULT = HOST
BUILT_IN: dict[str, str] = {HOST: f"Python {sys.version_info.major}.{sys.version_info.minor}"}
