"""The HTTP access rules (:mod:`dopd.serve.access`) and where ``dopd serve`` takes its keys from
(files and the environment, not argv)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dopd.cli.main import main
from dopd.cli.serve_cmd import resolve_key
from dopd.serve.access import AccessPolicy, default_trusted_hosts, is_loopback
from dopd.serve.errors import ServeError
from dopd.serve.serve_config import load_serve_config

LOCAL = ("127.0.0.1", 50000)
REMOTE = ("192.0.2.9", 50000)
JSON = (b"content-type", b"application/json")


def check(policy: AccessPolicy, method: str, path: str, *headers: tuple[bytes, bytes],
          client: tuple[str, int] | None = LOCAL) -> int:
    """The status the policy answers with, 0 when it lets the request through."""
    error = policy.check(method, path, [(b"host", b"localhost:8000"), *headers], client)
    return 0 if error is None else error.status


def bearer(key: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {key}".encode())


def test_admin_routes_need_json() -> None:
    open_policy = AccessPolicy(trusted_hosts=default_trusted_hosts("127.0.0.1"))
    for path in ("/v1/admin/switch", "/debug/frontend/reset"):
        assert check(open_policy, "POST", path) == 415
        assert check(open_policy, "POST", path, (b"content-type", b"text/plain")) == 415
        assert check(open_policy, "POST", path,
                     (b"content-type", b"application/x-www-form-urlencoded")) == 415
        assert check(open_policy, "POST", path, (b"content-type",
                                                 b"application/json; charset=utf-8")) == 0
    assert check(open_policy, "GET", "/debug/frontend") == 0


def test_without_an_admin_key_admin_routes_serve_loopback_clients_only() -> None:
    policy = AccessPolicy()
    assert check(policy, "POST", "/v1/admin/switch", JSON) == 0
    assert check(policy, "POST", "/v1/admin/switch", JSON, client=("::1", 1)) == 0
    assert check(policy, "POST", "/v1/admin/switch", JSON, client=REMOTE) == 403
    assert check(policy, "POST", "/v1/admin/switch", JSON, client=None) == 403
    with_api_key = AccessPolicy(api_key="k")
    assert check(with_api_key, "POST", "/v1/admin/switch", JSON) == 401
    assert check(with_api_key, "POST", "/v1/admin/switch", JSON, bearer("k")) == 0


def test_the_admin_key_is_separate_from_the_api_key() -> None:
    policy = AccessPolicy(api_key="api", admin_key="adm")
    assert check(policy, "POST", "/v1/admin/switch", JSON, client=REMOTE) == 401
    assert check(policy, "POST", "/v1/admin/switch", JSON, bearer("api")) == 401
    assert check(policy, "POST", "/v1/admin/switch", JSON, bearer("adm"), client=REMOTE) == 0
    assert check(policy, "POST", "/debug/frontend/reset", JSON, bearer("adm")) == 0
    assert check(policy, "POST", "/v1/completions", JSON, bearer("adm")) == 401
    assert check(policy, "POST", "/v1/completions", JSON, bearer("api")) == 0
    assert check(policy, "POST", "/v1/admin/switch", (b"content-type", b"text/plain"),
                 bearer("adm")) == 415


def test_api_key_and_protected_metrics() -> None:
    plain = AccessPolicy(api_key="k")
    protected = AccessPolicy(api_key="k", protect_metrics=True)
    for path in ("/metrics", "/debug/frontend"):
        assert check(plain, "GET", path) == 0
        assert check(protected, "GET", path) == 401
        assert check(protected, "GET", path, bearer("wrong")) == 401
        assert check(protected, "GET", path, bearer("k")) == 0
    for policy in (plain, protected):
        assert check(policy, "GET", "/health") == 0
        assert check(policy, "GET", "/v1/models") == 401
        assert check(policy, "GET", "/v1/models", (b"authorization", b"bearer k")) == 0
    assert "zq9secret" not in repr(AccessPolicy(api_key="zq9secret", admin_key="zq9secret"))


def test_trusted_hosts_stop_dns_rebinding() -> None:
    policy = AccessPolicy(trusted_hosts=default_trusted_hosts("127.0.0.1"))
    for host in (b"localhost:8000", b"127.0.0.1", b"[::1]:8000", b"LOCALHOST"):
        assert policy.check("GET", "/health", [(b"host", host)], LOCAL) is None
    for host in (b"attacker.example:8000", b"", b"localhost.attacker.example"):
        error = policy.check("GET", "/v1/models", [(b"host", host)], LOCAL)
        assert isinstance(error, ServeError) and error.status == 400
    named = AccessPolicy(trusted_hosts=("dopd.internal",))
    assert named.check("GET", "/health", [(b"host", b"dopd.internal:80")], REMOTE) is None
    assert default_trusted_hosts("0.0.0.0") == ("*",)
    assert AccessPolicy().check("GET", "/health", [(b"host", b"x.example")], REMOTE) is None
    assert is_loopback("::1") and is_loopback("127.0.0.5") and not is_loopback("10.0.0.1")


def test_keys_come_from_files_and_the_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("DOPD_API_KEY", "from-env")
    assert resolve_key(str(key_file), None, "DOPD_API_KEY", "--api-key-file") == "s3cret"
    assert resolve_key(None, None, "DOPD_API_KEY", "--api-key-file") == "from-env"
    assert capsys.readouterr().err == ""
    assert resolve_key(None, "argv", "DOPD_API_KEY", "--api-key-file") == "argv"
    assert "visible to every local user" in capsys.readouterr().err
    key_file.chmod(0o644)
    resolve_key(str(key_file), None, "DOPD_API_KEY", "--api-key-file")
    assert "readable by other users" in capsys.readouterr().err
    monkeypatch.delenv("DOPD_API_KEY")
    assert resolve_key(None, None, "DOPD_API_KEY", "--api-key-file") is None


@pytest.mark.parametrize("args,env", [
    (["--api-key-file", "missing-key-file"], {}),
    (["--admin-key-file", "missing-key-file"], {}),
    ([], {"DOPD_API_KEY": " "}),
    ([], {"DOPD_ADMIN_KEY": ""}),
])
def test_bad_keys_are_one_line_errors(args: list[str], env: dict[str, str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--port", "0", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('[serve]\ntrusted_hosts = ["dopd.internal"]\nprotect_metrics = true\n'
                    "channel_auth = false\n")
    config = load_serve_config(path, {})
    assert config.trusted_hosts == ("dopd.internal",) and config.protect_metrics
    assert not config.channel_auth and not config.ray_insecure
    assert load_serve_config(None, {}).channel_auth
    keyed = load_serve_config(None, {"api_key": "zq9secret", "admin_key": "zq9admin"})
    assert "zq9" not in repr(keyed)


def test_kv_auth_auto_signs_on_loopback_and_encrypts_across_a_network() -> None:
    from dopd.serve.runtime import resolve_kv_auth
    from dopd.serve.serve_config import ServeConfig

    assert resolve_kv_auth(ServeConfig()) == "hmac"
    assert resolve_kv_auth(ServeConfig(host="0.0.0.0")) == "hmac"  # local workers: loopback
    assert resolve_kv_auth(ServeConfig(backend="ray")) == "hmac"
    assert resolve_kv_auth(ServeConfig(backend="ray", host="0.0.0.0")) == "curve"
    assert resolve_kv_auth(ServeConfig(backend="ray", ray_address="auto")) == "curve"
    assert resolve_kv_auth(ServeConfig(kv_auth="curve")) == "curve"
