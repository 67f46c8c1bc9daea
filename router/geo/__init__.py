"""Client network map: prefixes -> client groups, with a numba longest-prefix match."""

from router.geo.clientmap import UNKNOWN_GROUP, ClientMap, ClientMapError, Groups, load_mmdb

__all__ = ["UNKNOWN_GROUP", "ClientMap", "ClientMapError", "Groups", "load_mmdb"]
