"""Anycast: announce and withdraw routes through ExaBGP's process API (see README.md)."""
