"""Client options from FLUENT_* environment variables: parsing, errors, and real clients."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluentclient import Auth, BufferedClient, FluentError, Server, SyncClient, Tls
from fluentclient.config import VARIABLES, options_from_env
from fluentclient.errors import ConfigurationError
from fluentclient.server import ForwardServer

from .certs import Pki, server_context

hosts = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True)
ports = st.integers(1, 65535)
spaces = st.sampled_from(["", " ", "  ", "\t"])


def spellings(words: list[str]) -> st.SearchStrategy[str]:
    """Each word in any mix of upper and lower case, as people write them."""
    return st.sampled_from(words).flatmap(
        lambda w: st.lists(st.booleans(), min_size=len(w), max_size=len(w)).map(
            lambda upper: "".join(c.upper() if u else c for c, u in zip(w, upper))
        )
    )


@given(
    port=ports, zeros=st.integers(0, 2), before=spaces, after=spaces,
)
def test_ports_parse_with_leading_zeros_and_spaces(port, zeros, before, after):
    value = f"{before}{'0' * zeros}{port}{after}"
    assert options_from_env({"FLUENT_PORT": value}) == {"port": port}


@given(st.text(max_size=12).filter(lambda s: not s.strip().isascii() or not s.strip().isdigit()))
def test_a_port_that_is_no_number_names_the_variable(value):
    if not value.strip():
        assert options_from_env({"FLUENT_PORT": value}) == {}  # blank counts as unset
        return
    with pytest.raises(ConfigurationError) as info:
        options_from_env({"FLUENT_PORT": value})
    assert info.value.variable == "FLUENT_PORT"
    assert str(info.value).startswith("FLUENT_PORT: ")


@pytest.mark.parametrize("value", ["0", "65536", "99999", "-1", "+80", "1e3", "8_0"])
def test_ports_out_of_range_or_oddly_written_are_refused(value):
    with pytest.raises(ConfigurationError, match="FLUENT_PORT"):
        options_from_env({"FLUENT_PORT": value})


@given(
    name=st.sampled_from(["TLS", "TLS_VERIFY", "REQUIRE_ACK"]),
    truth=st.booleans(),
    data=st.data(),
)
def test_booleans_in_any_case(name, truth, data):
    words = ["1", "true", "yes", "on"] if truth else ["0", "false", "no", "off"]
    value = data.draw(spellings(words))
    env = {f"FLUENT_{name}": f" {value} "}
    expected = {
        "TLS": {"tls": Tls() if truth else False},
        # Verification only means something with TLS on.
        "TLS_VERIFY": {"tls": Tls(verify=truth)},
        "REQUIRE_ACK": {"require_ack": truth},
    }[name]
    if name == "TLS_VERIFY":
        env["FLUENT_TLS"] = "on"
    assert options_from_env(env) == expected


@pytest.mark.parametrize("value", ["2", "maybe", "y", "enabled", "tru"])
def test_a_bad_boolean_names_the_variable(value):
    with pytest.raises(ConfigurationError, match="FLUENT_REQUIRE_ACK: expected true/false"):
        options_from_env({"FLUENT_REQUIRE_ACK": value})


server_specs = st.one_of(
    st.tuples(hosts, st.none() | ports).map(
        lambda hp: (hp[0] if hp[1] is None else f"{hp[0]}:{hp[1]}",
                    Server(hp[0]) if hp[1] is None else Server(hp[0], hp[1]))
    ),
    st.tuples(st.sampled_from(["::1", "fe80::1", "2001:db8::7"]), ports).map(
        lambda hp: (f"[{hp[0]}]:{hp[1]}", Server(hp[0], hp[1]))
    ),
    st.from_regex(r"/[a-z0-9_/.-]{1,20}", fullmatch=True).map(
        lambda path: (f"unix://{path}", Server(unix_path=path))
    ),
)


@given(st.lists(st.tuples(server_specs, spaces, spaces), min_size=1, max_size=6))
def test_servers_list_round_trips(items):
    value = ",".join(f"{before}{spec}{after}" for (spec, _), before, after in items)
    assert options_from_env({"FLUENT_SERVERS": value}) == {
        "servers": [server for (_, server), _, _ in items]
    }


@pytest.mark.parametrize(
    "value",
    ["::1", "::1:24224", "host:", ":24224", "host:port", "host:0", "host:70000", "[::1",
     "[]:1", "unix://", "a:1,,b:x", " , "],
)
def test_bad_servers_name_the_variable_and_the_entry(value):
    with pytest.raises(ConfigurationError) as info:
        options_from_env({"FLUENT_SERVERS": value})
    assert info.value.variable == "FLUENT_SERVERS"


def test_every_variable_at_once(pki: Pki):
    env = {
        "FLUENT_HOST": " fluentd.internal ",
        "FLUENT_PORT": "24225",
        "FLUENT_TAG_PREFIX": "shop.web",
        "FLUENT_SHARED_KEY": " secret with spaces ",
        "FLUENT_USERNAME": "app",
        "FLUENT_PASSWORD": " pw ",
        "FLUENT_TLS": "true",
        "FLUENT_TLS_CA_FILE": str(pki.ca_file),
        "FLUENT_TLS_CERT_FILE": str(pki.client_cert),
        "FLUENT_TLS_KEY_FILE": str(pki.client_key),
        "FLUENT_TLS_VERIFY": "no",
        "FLUENT_TLS_SERVER_NAME": "fluentd.test",
        "FLUENT_REQUIRE_ACK": "on",
        "FLUENT_COMPRESS": "GZIP",
        "OTHER_HOST": "ignored",
        "FLUENT_BIT_SOMETHING": "ignored too",
    }
    assert options_from_env(env) == {
        "host": "fluentd.internal",
        "port": 24225,
        "tag_prefix": "shop.web",
        # Secrets are taken exactly.
        "auth": Auth(shared_key=" secret with spaces ", username="app", password=" pw "),
        "tls": Tls(ca_file=str(pki.ca_file), cert_file=str(pki.client_cert),
                   key_file=str(pki.client_key), verify=False, server_name="fluentd.test"),
        "require_ack": True,
        "compress": "gzip",
    }
    assert {f"FLUENT_{name}" for name in VARIABLES} <= set(env) | {
        "FLUENT_UNIX_PATH", "FLUENT_SERVERS"
    }


def test_blank_variables_count_as_unset():
    env = {f"FLUENT_{name}": "" for name in VARIABLES} | {"FLUENT_HOST": "  "}
    assert options_from_env(env) == {}
    assert options_from_env({}) == {}


def test_another_prefix():
    env = {"APP_LOG_PORT": "5170", "FLUENT_PORT": "nonsense"}
    assert options_from_env(env, prefix="APP_LOG_") == {"port": 5170}


def test_the_process_environment_is_the_default(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(f"FLUENT_{name}", raising=False)
    monkeypatch.setenv("FLUENT_COMPRESS", "none")
    monkeypatch.setenv("FLUENT_UNIX_PATH", "/run/fluent.sock")
    assert options_from_env() == {"compress": None, "unix_path": "/run/fluent.sock"}


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"FLUENT_SERVERS": "a:1", "FLUENT_HOST": "b"}, "FLUENT_HOST"),
        ({"FLUENT_SERVERS": "a:1", "FLUENT_PORT": "2"}, "FLUENT_PORT"),
        ({"FLUENT_SERVERS": "a:1", "FLUENT_UNIX_PATH": "/s"}, "FLUENT_UNIX_PATH"),
        ({"FLUENT_UNIX_PATH": "/s", "FLUENT_PORT": "2"}, "FLUENT_PORT"),
        ({"FLUENT_PASSWORD": "pw"}, "FLUENT_PASSWORD"),
        ({"FLUENT_USERNAME": "u", "FLUENT_PASSWORD": "pw"}, "FLUENT_USERNAME"),
        ({"FLUENT_TLS_KEY_FILE": __file__}, "FLUENT_TLS_KEY_FILE"),
        ({"FLUENT_TLS_CA_FILE": "/no/such/ca.pem"}, "FLUENT_TLS_CA_FILE"),
        ({"FLUENT_TAG_PREFIX": "my app"}, "FLUENT_TAG_PREFIX"),
        ({"FLUENT_TAG_PREFIX": "app..web"}, "FLUENT_TAG_PREFIX"),
        ({"FLUENT_COMPRESS": "zstd"}, "FLUENT_COMPRESS"),
    ],
)
def test_contradictions_and_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigurationError) as info:
        options_from_env(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable + ": ")
    # One hierarchy, and a ValueError for those who do not know it.
    assert isinstance(info.value, FluentError) and isinstance(info.value, ValueError)


# -- the options drive real clients --------------------------------------------------------


@pytest.mark.parametrize("kind", ["buffered", "sync"])
def test_options_drive_a_client_with_acks_gzip_and_a_prefix(fluent_server, kind):
    env = {
        "FLUENT_HOST": fluent_server.host,
        "FLUENT_PORT": str(fluent_server.port),
        "FLUENT_TAG_PREFIX": "envtest",
        "FLUENT_REQUIRE_ACK": "yes",
        "FLUENT_COMPRESS": "gzip",
    }
    options = options_from_env(env)
    if kind == "buffered":
        client = BufferedClient(**options, at_exit=False)
    else:
        client = SyncClient(**options)
    with client:
        for i in range(50):
            client.post("app", {"i": i})
    assert fluent_server.wait_for_events(50, timeout=5)
    assert {e.tag for e in fluent_server.events} == {"envtest.app"}
    assert [e.record["i"] for e in fluent_server.events] == list(range(50))
    assert {f.mode for f in fluent_server.frames} == {"CompressedPackedForward"}
    assert fluent_server.acks_sent == len(fluent_server.frames)


def test_servers_shared_key_users_and_tls_from_the_environment(pki: Pki):
    users = {"app": "pw"}
    with ForwardServer(shared_key="k", users=users, ssl_context=server_context(pki)) as a, \
            ForwardServer(shared_key="k", users=users, ssl_context=server_context(pki)) as b:
        env = {
            "FLUENT_SERVERS": f"{a.host}:{a.port}, {b.host}:{b.port}",
            "FLUENT_SHARED_KEY": "k",
            "FLUENT_USERNAME": "app",
            "FLUENT_PASSWORD": "pw",
            "FLUENT_TLS": "1",
            "FLUENT_TLS_CA_FILE": str(pki.ca_file),
        }
        with SyncClient(**options_from_env(env)) as client:
            for i in range(20):
                client.post("env.multi", {"i": i})
            assert len(client.stats().servers) == 2
        assert a.wait_for(lambda: a.event_count + b.event_count == 20, timeout=5)
        got = sorted(e.record["i"] for e in a.events + b.events)
        assert got == list(range(20))
        assert a.auth_failures == b.auth_failures == 0
        assert a.handshakes + b.handshakes >= 1


def test_from_env_builds_a_client_and_overrides_win(fluent_server):
    env = {"FLUENT_HOST": "127.0.0.1", "FLUENT_PORT": str(fluent_server.port),
           "FLUENT_TAG_PREFIX": "fromenv", "FLUENT_REQUIRE_ACK": "true"}
    with BufferedClient.from_env(environ=env, at_exit=False) as client:
        assert client.post("t", {"n": 1}, ack=True).result(timeout=5) is None
    with SyncClient.from_env(environ={"FLUENT_PORT": "1", "FLUENT_TAG_PREFIX": "sync"},
                             port=fluent_server.port) as sync:
        sync.post("t", {"n": 2})
    assert fluent_server.wait_for_events(2)
    assert [(e.tag, e.record["n"]) for e in fluent_server.events] == [
        ("fromenv.t", 1), ("sync.t", 2)]
    with pytest.raises(ConfigurationError, match="FLUENT_PORT"):
        BufferedClient.from_env(environ={"FLUENT_PORT": "http"})
