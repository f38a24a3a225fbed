"""Reaching the servers, for both clients: links, connections, handshakes."""
