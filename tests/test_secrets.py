"""Secrets: `router keys generate`, file permissions, the published sample keys and
placeholder tokens kept on loopback, key rotation in the keys file, and no digest of the
keys file on the open API."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from router.config import ConfigError, load_deployment
from router.config.secrets import (
    SAMPLE_KEY_FINGERPRINTS,
    SecretFileError,
    is_placeholder_token,
    key_fingerprint,
    read_secret_file,
)
from router.service.config_files import SECRET_HASH, ConfigFiles
from tests.conftest import REPO, make_deployment


def router_cli(
    *args: str, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args], capture_output=True, text=True, cwd=REPO,
        timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sample_fingerprints_are_exactly_the_shipped_sample_keys() -> None:
    keys = yaml.safe_load((REPO / "zones" / "node-keys.sample.yaml").read_text())["keys"]
    assert {key_fingerprint(bytes.fromhex(k)) for k in keys.values()} == SAMPLE_KEY_FINGERPRINTS


# -- router keys generate ---------------------------------------------------------------------


def test_generate_writes_0600_keeps_keys_and_rotates(tmp_path: Path) -> None:
    out = tmp_path / "keys.yaml"
    os.umask(0o022)
    done = router_cli("keys", "generate", "--zones", "zones", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert mode(out) == 0o600
    first = yaml.safe_load(out.read_text())["keys"]
    nodes = yaml.safe_load((REPO / "zones" / "nodes.yaml").read_text())["nodes"]
    assert set(first) == {n["id"] for n in nodes}
    assert all(len(bytes.fromhex(k)) == 32 for k in first.values())
    assert len(set(first.values())) == len(first)  # one key per node, none shared
    assert not {key_fingerprint(bytes.fromhex(k)) for k in first.values()} & SAMPLE_KEY_FINGERPRINTS

    assert router_cli("keys", "generate", "--zones", "zones", "--out", str(out)).returncode == 0
    assert yaml.safe_load(out.read_text())["keys"] == first  # existing keys kept

    done = router_cli("keys", "generate", "--zones", "zones", "--out", str(out), "--rotate",
                      "--node", "tef-mad-1")  # fmt: skip
    assert done.returncode == 0 and "rotating: tef-mad-1" in done.stdout
    rotating = yaml.safe_load(out.read_text())["keys"]["tef-mad-1"]
    assert rotating["current"] == first["tef-mad-1"] and rotating["next"] != first["tef-mad-1"]

    # The router accepts a file in rotation: both keys of that node.
    zones = make_deployment(tmp_path / "d")
    shutil.copy(out, zones / "real-keys.yaml")
    (zones / "real-keys.yaml").chmod(0o600)
    deployment = load_deployment(zones, zones / "real-keys.yaml")
    assert deployment.node_keys["tef-mad-1"] == (
        bytes.fromhex(rotating["current"]),
        bytes.fromhex(rotating["next"]),
    )

    done = router_cli("keys", "generate", "--zones", "zones", "--out", str(out), "--promote")
    assert done.returncode == 0 and "promoted: tef-mad-1" in done.stdout
    assert yaml.safe_load(out.read_text())["keys"]["tef-mad-1"] == rotating["next"]

    done = router_cli("keys", "generate", "--zones", "zones", "--out", str(out), "--force")
    assert done.returncode == 0
    assert not set(yaml.safe_load(out.read_text())["keys"].values()) & set(first.values())

    agent_key = tmp_path / "one.key"
    done = router_cli(
        "keys", "export", "--keys", str(out), "--node", "ix-mad-1", "--out", str(agent_key)
    )
    assert done.returncode == 0 and mode(agent_key) == 0o600
    assert agent_key.read_text().strip() == yaml.safe_load(out.read_text())["keys"]["ix-mad-1"]


def test_generate_replaces_published_sample_keys(tmp_path: Path) -> None:
    out = tmp_path / "keys.yaml"
    shutil.copy(REPO / "zones" / "node-keys.sample.yaml", out)
    done = router_cli("keys", "generate", "--zones", "zones", "--out", str(out))
    assert done.returncode == 0 and "replaced: tef-mad-1" in done.stdout
    keys = yaml.safe_load(out.read_text())["keys"]
    assert not {key_fingerprint(bytes.fromhex(k)) for k in keys.values()} & SAMPLE_KEY_FINGERPRINTS


def test_generate_reports_a_bad_directory_and_unknown_nodes(tmp_path: Path) -> None:
    done = router_cli("keys", "generate", "--zones", str(tmp_path), "--out", str(tmp_path / "k"))
    assert done.returncode == 1 and "nodes.yaml" in done.stderr
    done = router_cli("keys", "generate", "--zones", "zones", "--out", str(tmp_path / "k"),
                      "--rotate", "--node", "ghost")  # fmt: skip
    assert done.returncode == 2 and "ghost" in done.stderr


# -- permissions --------------------------------------------------------------------------------


@pytest.fixture
def real_keys(tmp_path: Path) -> Path:
    zones = make_deployment(tmp_path)
    out = zones / "node-keys.yaml"
    assert router_cli("keys", "generate", "--zones", str(zones), "--out", str(out)).returncode == 0
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["health"]["keys"] = "node-keys.yaml"
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    return out


def test_a_keys_file_others_can_read_is_refused_with_the_fix(real_keys: Path) -> None:
    load_deployment(real_keys.parent)  # 0600: fine
    real_keys.chmod(0o640)
    with pytest.raises(ConfigError) as info:
        load_deployment(real_keys.parent)
    message = str(info.value)
    assert "node-keys.yaml" in message and "0640" in message and "chmod 600" in message


def test_the_published_sample_keys_may_be_world_readable(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    (zones / "node-keys.sample.yaml").chmod(0o644)
    assert load_deployment(zones).node_keys  # public by design; kept on loopback instead


def test_token_files(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("a" * 40 + "\n")
    token.chmod(0o600)
    assert read_secret_file(token, "--api-token-file") == "a" * 40
    token.chmod(0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        read_secret_file(token, "--api-token-file")
    token.write_text("")
    token.chmod(0o600)
    with pytest.raises(SecretFileError, match="empty"):
        read_secret_file(token, "--api-token-file")
    with pytest.raises(SecretFileError, match="cannot read"):
        read_secret_file(tmp_path / "missing", "--api-token-file")


def test_serve_refuses_a_readable_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("b" * 40)
    token.chmod(0o644)
    done = router_cli("serve", "--zones", "zones", "--listen", "127.0.0.1:0", "--api",
                      "127.0.0.1:0", "--api-token-file", str(token))  # fmt: skip
    assert done.returncode == 2 and "chmod 600" in done.stderr and str(token) in done.stderr


@pytest.mark.parametrize(
    "token, placeholder",
    [("replace-me-with-a-secret", True), ("changeme", True), ("short-but-random-x9", True),
     ("3f1c9a7e0b2d4c6e8a1b3c5d7e9f0a2b", False)],
)  # fmt: skip
def test_placeholder_tokens(token: str, placeholder: bool) -> None:
    assert is_placeholder_token(token) is placeholder


# -- loopback only with public secrets ------------------------------------------------------------


def test_sample_keys_are_refused_for_telemetry_off_loopback(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    done = router_cli("serve", "--zones", str(zones), "--listen", "127.0.0.1:0",
                      "--telemetry", "0.0.0.0:0")  # fmt: skip
    assert done.returncode == 1
    assert "published sample keys" in done.stderr and "127.0.0.1" in done.stderr


def test_a_placeholder_token_is_refused_for_the_api_off_loopback(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    done = router_cli("serve", "--zones", str(zones), "--listen", "127.0.0.1:0", "--api",
                      "0.0.0.0:0", env={"ROUTER_API_TOKEN": "replace-me-with-a-secret"})  # fmt: skip
    assert done.returncode == 1
    assert "placeholder" in done.stderr and "--api-token-file" in done.stderr


def test_sample_keys_keep_the_api_on_loopback_too(tmp_path: Path) -> None:
    """A deployment still on the sample keys is a lab: a good token does not open the API."""
    zones = make_deployment(tmp_path)
    done = router_cli("serve", "--zones", str(zones), "--listen", "127.0.0.1:0", "--api",
                      "0.0.0.0:0", env={"ROUTER_API_TOKEN": "9" * 40})  # fmt: skip
    assert done.returncode == 1
    assert "--api 0.0.0.0:0" in done.stderr and "published sample keys" in done.stderr


def test_a_reload_onto_sample_keys_is_refused_while_telemetry_is_public(real_keys: Path) -> None:
    """The check is in the config path, so a reload cannot switch to the sample keys."""
    from router.service import loaded
    from router.service.loaded import ConfigUnusable

    zones = real_keys.parent
    deployment = load_deployment(zones, REPO / "zones" / "node-keys.sample.yaml")
    files = ConfigFiles.read(zones)
    with pytest.raises(ConfigUnusable, match="published sample keys"):
        loaded.prepare(deployment, None, files, 1, False, True, telemetry_public=True)


# -- nothing public is a digest of the keys ------------------------------------------------------


def test_the_public_config_version_leaves_the_keys_out(real_keys: Path) -> None:
    zones = real_keys.parent
    before = ConfigFiles.read(zones)
    assert before.public_hashes["node-keys.yaml"] == SECRET_HASH
    assert "node-keys.yaml" in before.secret
    real_keys.write_text(real_keys.read_text().replace("keys:", "keys:  "))
    after = ConfigFiles.read(zones)
    assert after.version == before.version  # the public version does not move with the keys
    assert after.revision != before.revision  # but the reloader sees the change


def test_keys_file_given_on_the_command_line_is_secret_too(real_keys: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "secret-keys.yaml"
    shutil.copy(real_keys, elsewhere)
    files = ConfigFiles.read(real_keys.parent, elsewhere)
    secret_names = {n for n, v in files.public_hashes.items() if v == SECRET_HASH}
    assert secret_names == {os.path.relpath(elsewhere, real_keys.parent)}


def test_no_digest_of_the_keys_file_on_the_open_api(real_keys: Path, tmp_path: Path) -> None:
    import hashlib
    import urllib.request

    from tests.conftest import start_router

    digest = hashlib.sha256(real_keys.read_bytes()).hexdigest()
    router = start_router(real_keys.parent, tmp_path / "router.log", "--telemetry", "127.0.0.1:0")
    try:
        for path in ("/v1/config", "/metrics", "/v1/telemetry", "/v1/nodes", "/v1/status"):
            with urllib.request.urlopen(f"{router.api}{path}", timeout=5) as response:
                body = response.read().decode()
            assert digest not in body and digest[:16] not in body, path
            if path == "/v1/config":
                assert SECRET_HASH in body
    finally:
        router.stop()
        assert router.process.stdout is not None
        router.process.stdout.close()
