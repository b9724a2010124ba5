"""The sensor's compiled hot path (Cython), with a pure-Python twin for every module.

``COSTMESH_NO_EXTENSIONS=1`` selects the twins at run time, as aiohttp's ``AIOHTTP_NO_EXTENSIONS`` does, so the parser
tests can run against both builds and require that they agree.
"""

import os

NO_EXTENSIONS = os.environ.get("COSTMESH_NO_EXTENSIONS") == "1"
