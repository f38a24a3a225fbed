"""The clients' keyword arguments that moved into the option objects of options.py.

A caller still passing one gets a TypeError that says where it went, rather than
Python's bare "unexpected keyword argument" (docs/migration.md has the same table).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# Old keyword -> (the client keyword that took it, the field of that keyword's object).
MOVED: Mapping[str, tuple[str, str]] = {
    "buffer_limit": ("buffering", "limit"),
    "write_threshold": ("buffering", "write_threshold"),
    "flush_interval": ("buffering", "flush_interval"),
    "max_frame_size": ("buffering", "max_frame_size"),
    "overflow": ("buffering", "overflow"),
    "overflow_timeout": ("buffering", "overflow_timeout"),
    "spool_dir": ("buffering", "spool_dir"),
    "spool_limit": ("buffering", "spool_limit"),
    "connect_timeout": ("timeouts", "connect"),
    "write_timeout": ("timeouts", "write"),
    "ack_timeout": ("timeouts", "ack"),
    "ack_retry_limit": ("timeouts", "ack_retries"),
    "keepalive_timeout": ("timeouts", "idle"),
    "default": ("records", "default"),
    "max_depth": ("records", "max_depth"),
    "non_str_keys": ("records", "non_str_keys"),
    "non_finite_floats": ("records", "non_finite_floats"),
    "non_utf8_bytes": ("records", "non_utf8_bytes"),
    "int_time": ("records", "int_time"),
    "entries_as_str": ("records", "entries_as_str"),
    "shared_key": ("auth", "shared_key"),
    "self_hostname": ("auth", "self_hostname"),
    "username": ("auth", "username"),
    "password": ("auth", "password"),
    "ssl_context": ("tls", "context"),
    "tls_ca_file": ("tls", "ca_file"),
    "tls_cert_file": ("tls", "cert_file"),
    "tls_key_file": ("tls", "key_file"),
    "tls_verify": ("tls", "verify"),
    "tls_server_name": ("tls", "server_name"),
}
# The class of each option object, by the client keyword that takes it.
CLASSES = {"buffering": "Buffering", "timeouts": "Timeouts", "records": "RecordRules",
           "auth": "Auth", "tls": "Tls"}


def refuse_moved(owner: str, init: Callable[..., object], given: Mapping[str, object]) -> None:
    """Raise a TypeError for the first keyword in ``given`` that moved and that ``init``
    (the class's ``__init__``) does not take itself."""
    if MOVED.keys().isdisjoint(given):
        return
    code = getattr(init, "__code__", None)
    taken = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount] if code else ()
    for name in given:
        if name in MOVED and name not in taken:
            keyword, field = MOVED[name]
            raise TypeError(f"{owner}() keyword {name!r} moved: use "
                            f"{keyword}={CLASSES[keyword]}({field}=...)")
