"""The DNS protocol engine: wire parsing, the answer book, the responder, transports."""
