"""Several servers for one client: tried in order, the one in use named in the log."""

from __future__ import annotations

import signal
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.clients import curl
from tests.peers import Process, client_of, refusing_address, start_server


def test_a_dead_first_server_is_skipped_for_the_next(workdir, web):
    server = start_server(workdir)
    live = f"127.0.0.1:{server.port}"
    dead_sock, dead = refusing_address()
    with dead_sock:
        client = client_of(workdir, dead, live)
        client.wait_for(f"cannot reach the server {dead}")
        client.wait_for(f"tunnel to {live}: up")
        body = curl(client.port, f"http://127.0.0.1:{web.server_port}/f4080")
    assert body == (web.root / "f4080").read_bytes()
    assert client.stop() == 0
    server.stop()


def test_servers_listed_in_the_config_file(workdir):
    server = start_server(workdir)
    live = f"127.0.0.1:{server.port}"
    dead_sock, dead = refusing_address()
    with dead_sock:
        client = client_of(workdir, config=f'[client]\nserver = ["{dead}", "{live}"]\n')
        client.wait_for(f"tunnel to {live}: up")
    assert client.stop() == 0
    server.stop()


def client_metrics(client: Process) -> dict[tuple[str, tuple], float]:
    url = f"http://127.0.0.1:{client.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_when_the_server_in_use_dies_the_next_one_takes_over(workdir, web):
    first, second = start_server(workdir), start_server(workdir)
    servers = f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"
    client = client_of(workdir, *servers, extra=("--metrics", "127.0.0.1:0"))
    pattern = r"metrics: serving Prometheus metrics on http://127\.0\.0\.1:(\d+)/"
    client.metrics_port = int(client.wait_for(pattern).group(1))
    client.wait_for(f"tunnel to 127.0.0.1:{first.port}: up")
    found = client_metrics(client)
    assert found[("gjproxy_client_tunnel_up", ())] == 1
    assert found[("gjproxy_client_server", (("server", servers[0]),))] == 1
    first.stop(signal.SIGKILL)
    client.wait_for(f"using server 127.0.0.1:{second.port}", timeout=30)
    client.wait_for(f"tunnel to 127.0.0.1:{second.port}: up", timeout=30)
    body = curl(client.port, f"http://127.0.0.1:{web.server_port}/f65536")
    assert body == (web.root / "f65536").read_bytes()
    found = client_metrics(client)
    assert found[("gjproxy_client_server", (("server", servers[1]),))] == 2
    assert found[("gjproxy_client_tunnel_up", ())] == 1
    assert found[("gjproxy_connections_total", ())] == 1
    assert found[("gjproxy_transferred_bytes_total", ())] >= 65536
    assert client.stop() == 0
    second.stop()
