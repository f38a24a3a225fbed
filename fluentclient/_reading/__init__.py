"""The reader thread: it packs posted messages into the buffer."""
