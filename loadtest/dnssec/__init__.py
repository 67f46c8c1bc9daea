"""The DNSSEC benchmark's peers and query files: PowerDNS signing its LUA answers online
(``pdns_signed``) and the throughput mix with the DO bit set (``queries``)."""
