"""Client network map: prefixes -> client groups, with a numba longest-prefix match."""

from router.geo.clientmap import UNKNOWN_GROUP, ClientMap, ClientMapError, Groups, SourceProblem
from router.geo.importers import Source, build_client_map, load_mmdb

__all__ = [
    "UNKNOWN_GROUP",
    "ClientMap",
    "ClientMapError",
    "Groups",
    "Source",
    "SourceProblem",
    "build_client_map",
    "load_mmdb",
]
