"""Redis with a password and with TLS; no secret in logs, results or Flower's pages."""
from __future__ import annotations

import subprocess
import time

import pytest

from devstack.redis_server import RedisServer, free_port
from devstack.stack import LocalStack
from producer import BrokerUnavailable, Producer
from tests.conftest import UNTRAINED

SECRET = "pa55-word-that-must-not-leak"


def _make_certificates(folder):
    """A CA and a server certificate for 127.0.0.1, with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=featurevis-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.crt")
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


def test_a_password_protected_redis_works_and_the_password_leaks_nowhere(tmp_path):
    with RedisServer(data_dir=tmp_path / "redis", password=SECRET) as server:
        with LocalStack(results_dir=tmp_path / "results", redis_url=server.url, preload=UNTRAINED,
                        log_dir=tmp_path / "logs", flower_port=free_port(), flower_auth="ops:flower-pass") as stack:
            result = Producer(server.url).enqueue({"model": UNTRAINED, "conv_id": 0, "iterations": 2}).wait(timeout=120)
            page = subprocess.run(["curl", "-s", "-u", "ops:flower-pass", f"http://127.0.0.1:{stack.flower_port}/broker"],
                                  capture_output=True, text=True).stdout
            assert "redis://" in page and SECRET not in page
        logs = "".join(path.read_text(errors="replace") for path in (tmp_path / "logs").iterdir())
        assert "redis://:**@127.0.0.1" in logs  # the broker URL is printed, masked
        assert SECRET not in logs
        assert SECRET not in (tmp_path / "results" / result.meta).read_text()
    with RedisServer(data_dir=tmp_path / "redis2", password=SECRET) as again:
        with pytest.raises(BrokerUnavailable) as caught:
            Producer(again.url.replace(SECRET, "a-wrong-password")).enqueue({"model": UNTRAINED})
        assert "a-wrong-password" not in str(caught.value) and "\n" not in str(caught.value)


def test_redis_over_tls_with_a_verified_certificate(tmp_path):
    ca, certificate, key = _make_certificates(tmp_path)
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                               "--tls-cert-file", str(certificate), "--tls-key-file", str(key),
                               "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
                               "--requirepass", SECRET, "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        time.sleep(0.5)
        with LocalStack(results_dir=tmp_path / "results", redis_url=url, preload=UNTRAINED,
                        log_dir=tmp_path / "logs") as stack:
            result = Producer(url).enqueue({"model": UNTRAINED, "conv_id": 0, "feature": 1, "iterations": 2}).wait(timeout=120)
            assert result.cached is False
            assert stack.processes["w1"].poll() is None
        logs = "".join(path.read_text(errors="replace") for path in (tmp_path / "logs").iterdir())
        assert SECRET not in logs
    finally:
        server.terminate()
        server.wait()
