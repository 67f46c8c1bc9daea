"""The query log's files: created mode 0640 whatever the umask, an existing file readable by
others tightened, rotation at --query-log-max-bytes (once, however many writers see the file
full; every line kept, none torn), and the same through a real router's workers."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import stat
import time
from pathlib import Path

import dns.message
import pytest

from router.cli import main
from router.dns import query_log
from router.dns.query_log import (
    AppendFile,
    QueryLogSettings,
    open_check,
    parse_size,
    rotate_files,
)
from tests.conftest import start_router


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def rotated(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".*"), key=lambda p: int(p.suffix[1:]))


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_created_0640_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        checked = tmp_path / "checked.jsonl"
        open_check(checked)
        written = tmp_path / "written.jsonl"
        writer = AppendFile(written)
        writer.write_line(b"{}\n")
        writer.close()
    finally:
        os.umask(old)
    assert mode(checked) == 0o640
    assert mode(written) == 0o640
    assert written.read_bytes() == b"{}\n"


def test_an_existing_file_readable_by_others_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"old": 1}\n')
    path.chmod(0o644)
    writer = AppendFile(path)
    writer.write_line(b"{}\n")
    writer.close()
    assert mode(path) == 0o640
    assert path.read_text() == '{"old": 1}\n{}\n'  # appended, not truncated
    path.chmod(0o600)  # the operator's stricter choice is kept
    AppendFile(path).close()
    assert mode(path) == 0o600


def test_parse_size() -> None:
    assert parse_size("0") == 0
    assert parse_size("4096") == 4096
    assert parse_size("64K") == 64 << 10
    assert parse_size("100M") == 100 << 20
    assert parse_size("1g") == 1 << 30
    assert parse_size("2MiB") == 2 << 20
    for bad in ("", "12X", "-1", "1.5M", "M"):
        with pytest.raises(ValueError, match="a size is bytes"):
            parse_size(bad)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="size limit"):
        QueryLogSettings(Path("q"), 1, max_bytes=-1)
    with pytest.raises(ValueError, match="rotated files"):
        QueryLogSettings(Path("q"), 1, max_bytes=100, keep=0)


def test_rotate_files_shifts_and_drops_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    for generation in range(4):
        path.write_text(f"{generation}\n")
        rotate_files(path, keep=2)
    assert not path.exists()
    assert [p.name for p in rotated(path)] == ["q.jsonl.1", "q.jsonl.2"]
    assert (tmp_path / "q.jsonl.1").read_text() == "3\n"
    assert (tmp_path / "q.jsonl.2").read_text() == "2\n"


def test_rotates_at_max_bytes_keeping_n_files(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    old = os.umask(0o077)
    try:
        writer = AppendFile(path, max_bytes=8192, keep=3)
        line = json.dumps({"pad": "x" * 90}).encode() + b"\n"  # 100 bytes
        for _ in range(1000):  # 100 kB: about 12 rotations
            writer.write_line(line)
        writer.close()
    finally:
        os.umask(old)
    assert writer.rotations >= 10
    files = rotated(path)
    assert [p.name for p in files] == ["q.jsonl.1", "q.jsonl.2", "q.jsonl.3"]
    for p in [path, *files]:
        assert mode(p) == 0o640
    for p in files:  # the size is looked at every 4096 bytes appended (max_bytes // 16 or 4 KiB)
        assert 8192 <= p.stat().st_size <= 8192 + 4096 + len(line)
        assert all(json.loads(text) for text in p.read_text().splitlines())


def _write_lines(path: str, writer_id: int, lines: int, max_bytes: int) -> None:
    log = AppendFile(Path(path), max_bytes=max_bytes, keep=1000)
    for i in range(lines):
        log.write_line(json.dumps({"w": writer_id, "i": i, "pad": "y" * 40}).encode() + b"\n")
    log.close()


def test_several_writers_rotate_once_and_lose_no_line(tmp_path: Path) -> None:
    """Four processes append to one file rotated at 16 KiB: every line lands whole in exactly
    one file, and no rotation is doubled (a doubled one would leave a nearly empty file)."""
    path = tmp_path / "q.jsonl"
    writers, lines, max_bytes = 4, 3000, 16384
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_write_lines, args=(str(path), w, lines, max_bytes))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    seen: dict[tuple[int, int], int] = {}
    files = rotated(path)
    for p in [path, *files]:
        for text in p.read_text().splitlines():
            record = json.loads(text)  # a torn or mixed line would not parse
            key = (record["w"], record["i"])
            seen[key] = seen.get(key, 0) + 1
    assert len(seen) == writers * lines and set(seen.values()) == {1}
    total = sum(p.stat().st_size for p in [path, *files])
    assert len(files) >= total // (max_bytes + writers * 4096 + 100) - 1
    # Lines a writer appended to a file after another rotated it land in the rotated file,
    # so a rotated file may be larger than max_bytes, never smaller.
    assert all(p.stat().st_size >= max_bytes for p in files)


def test_bad_size_is_refused_at_start(
    tmp_path: Path, deployment_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["serve", "--zones", str(deployment_dir), "--listen", "127.0.0.1:0",
            "--query-log", str(tmp_path / "q.jsonl")]  # fmt: skip
    assert main([*args, "--query-log-max-bytes", "12X"]) == 2
    assert "--query-log: a size is bytes" in capsys.readouterr().err
    assert main([*args, "--query-log-max-bytes", "1M", "--query-log-keep", "0"]) == 2
    assert "rotated files" in capsys.readouterr().err


def test_router_workers_write_0640_and_rotate(tmp_path: Path, deployment_dir: Path) -> None:
    path = tmp_path / "queries.jsonl"
    old = os.umask(0o077)  # the router and its workers inherit it
    try:
        running = start_router(
            deployment_dir, tmp_path / "router.log", "--query-log", str(path),
            "--query-log-sample", "1", "--query-log-max-bytes", "4K", "--query-log-keep", "3",
            api=False, workers=2,
        )  # fmt: skip
    finally:
        os.umask(old)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(2)
        query = dns.message.make_query("video.cdn.example.", "A")
        answered = 0
        deadline = time.monotonic() + 30
        # About 500 bytes a line: 4 KiB is about 8 lines. Queries until three rotations.
        while time.monotonic() < deadline and len(rotated(path)) < 3:
            for _ in range(50):
                sock.sendto(query.to_wire(), (running.host, running.port))
                sock.recv(4096)
                answered += 1
            time.sleep(0.2)
        sock.close()
    finally:
        running.stop()
        assert running.process.stdout is not None
        running.process.stdout.close()
    files = rotated(path)
    assert [p.name for p in files] == [f"queries.jsonl.{i}" for i in (1, 2, 3)], answered
    for p in [path, *files]:
        assert mode(p) == 0o640
    for p in files:
        records = [json.loads(text) for text in p.read_text().splitlines()]
        assert records and all(r["qname"] == "video.cdn.example." for r in records)
        assert p.stat().st_size >= 4096


def test_a_file_rotated_away_between_the_two_opens_is_created_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race several writers hit: the path exists when one tries to create it and is gone
    (another writer rotated it) when it opens it; the writer creates it again, loses nothing."""
    path = tmp_path / "q.jsonl"
    path.write_text("")
    real_open = os.open
    calls: list[str] = []

    def racing_open(file, flags, *args):
        if not flags & os.O_CREAT and not calls.count("rotated"):
            calls.append("rotated")
            os.replace(path, f"{path}.1")  # the other writer's rotation lands here
        calls.append("create" if flags & os.O_CREAT else "open")
        return real_open(file, flags, *args)

    monkeypatch.setattr(query_log.os, "open", racing_open)
    fd = query_log.open_log(path)
    try:
        os.write(fd, b"line\n")
    finally:
        os.close(fd)
    assert calls == ["create", "rotated", "open", "create"]
    assert path.read_bytes() == b"line\n"
    assert stat.S_IMODE(path.stat().st_mode) == query_log.FILE_MODE
