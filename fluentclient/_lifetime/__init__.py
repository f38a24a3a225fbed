"""Forks, the end of the process and signals, for every client at once."""
