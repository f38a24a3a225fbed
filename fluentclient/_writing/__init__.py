"""The writer thread: it sends whole frames and proves what arrived."""
