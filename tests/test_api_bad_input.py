"""The API's input checks: every endpoint that takes a body or parameters, sent bad ones
(not JSON, not an object, wrong types, unknown fields, bad values, wrong Content-Type, too
large), answers 400 (413 for size) with a JSON error naming the problem, never 500 and
never acting; the token is checked first. ``GET /v1/decisions`` a page at a time: the
pages cover the whole set exactly once, the limit holds, the filters select what they say.
A handler's unexpected exception is a logged 500 JSON, not an HTML page."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from router.api import decisions
from router.api.http import BODY_MAX, create_app
from router.plan import fetch_decisions
from tests.conftest import RunningRouter, start_router

NODE = "tef-mad-1"
# In the answers of a hundred-odd client groups of the sample (the decisions filters page them).
ANSWERED_NODE = "pop-par-1"
WRITES = {
    "status": ("PUT", "/v1/status"),
    "admin-state": ("PUT", f"/v1/nodes/{NODE}/admin-state"),
    "reload": ("POST", "/v1/config/reload"),
}
GETS = ["/v1/status", "/v1/nodes", "/v1/changes", "/v1/decisions", "/v1/demand", "/v1/config",
        "/v1/dns", "/v1/telemetry", "/metrics", "/status", "/static/countries-110m.json"]  # fmt: skip


@pytest.fixture(scope="module")
def running(deployment_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A router of its own: the tests below would leave it changed if a check failed."""
    router = start_router(
        deployment_dir, tmp_path_factory.mktemp("api-input") / "router.log", workers=1
    )
    yield router
    router.stop()
    assert router.process.stdout is not None
    router.process.stdout.close()


def request(
    router: RunningRouter,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = "yes",
    content_type: str | None = "application/json",
    chunked: bool = False,
) -> tuple[int, dict, str]:
    """(status, JSON body, Content-Type) of one raw request."""
    url = urllib.parse.urlsplit(router.api)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {router.token if token == 'yes' else token}"
    if content_type is not None and body is not None:
        headers["Content-Type"] = content_type
    try:
        if chunked and body is not None:  # no Content-Length: the size shows only while reading
            connection.request(method, path, body=iter([body[i : i + 4096] for i in range(0, len(body), 4096)]),
                               headers=headers, encode_chunked=True)  # fmt: skip
        else:
            connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(raw) if "json" in kind else {}, kind
    finally:
        connection.close()


def get(router: RunningRouter, path: str) -> tuple[int, dict]:
    status, body, _ = request(router, "GET", path)
    return status, body


def unchanged(router: RunningRouter) -> None:
    assert get(router, "/v1/status")[1]["state"] == "serving"
    node = next(n for n in get(router, "/v1/nodes")[1]["nodes"] if n["id"] == NODE)
    assert node["admin_state"] is None and node["state"] == "up"


# (case, body, what the error must say) for every write endpoint; the reload takes no field.
BAD_BODIES = [
    ("not-json", b"state=down", "not JSON"),
    ("truncated-json", b'{"state": "down"', "not JSON"),
    ("array", b'["down"]', "must be a JSON object"),
    ("string", b'"down"', "must be a JSON object"),
    ("number", b"1", "must be a JSON object"),
    ("null", b"null", "must be a JSON object"),
    ("not-utf8", b'{"state": "\xff"}', "not UTF-8"),
    ("duplicate-field", b'{"state": "down", "state": "up"}', 'field "state" given twice'),
    ("nan", b'{"state": NaN}', "NaN is not JSON"),
]
WRONG_FIELDS = {  # endpoint -> [(case, body, field named, words in the problem)]
    "status": [
        ("list", {"state": ["draining"]}, "state", "Input should be 'serving' or 'draining'"),
        ("number", {"state": 1}, "state", "Input should be"),
        ("enum", {"state": "sideways"}, "state", "'serving' or 'draining'"),
        ("unknown-field", {"state": "draining", "force": True}, "force", "unknown field"),
        ("missing", {}, "state", "required field missing"),
        ("case", {"State": "draining"}, "State", "unknown field"),
    ],
    "admin-state": [
        ("list", {"state": ["down"]}, "state", "Input should be 'up', 'down' or 'drain'"),
        ("object", {"state": {"down": True}}, "state", "Input should be"),
        ("bool", {"state": True}, "state", "Input should be"),
        ("enum", {"state": "sideways"}, "state", "'up', 'down' or 'drain'"),
        ("unknown-field", {"state": "down", "reason": "maintenance"}, "reason", "unknown field"),
        ("missing", {}, "state", "required field missing"),
    ],
    "reload": [
        ("unknown-field", {"force": True}, "force", "unknown field"),
    ],
}


@pytest.mark.parametrize("endpoint", list(WRITES))
@pytest.mark.parametrize(("case", "body", "says"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_malformed_bodies_are_400(
    running: RunningRouter, endpoint: str, case: str, body: bytes, says: str
) -> None:
    method, path = WRITES[endpoint]
    status, answer, kind = request(running, method, path, body)
    assert status == 400, answer
    assert kind.startswith("application/json")
    assert says in answer["error"]
    unchanged(running)


@pytest.mark.parametrize(
    ("endpoint", "case", "body", "field", "says"),
    [(e, *case) for e, cases in WRONG_FIELDS.items() for case in cases],
    ids=[f"{e}-{case[0]}" for e, cases in WRONG_FIELDS.items() for case in cases],
)
def test_wrong_types_values_and_fields_are_400_naming_the_field(
    running: RunningRouter, endpoint: str, case: str, body: dict, field: str, says: str
) -> None:
    method, path = WRITES[endpoint]
    status, answer, _ = request(running, method, path, json.dumps(body).encode())
    assert status == 400, answer
    assert any(p["field"] == field and says in p["problem"] for p in answer["problems"]), answer
    assert f"{field}: " in answer["error"] and says in answer["error"]
    unchanged(running)


def test_admin_state_with_a_list_is_400_not_500(running: RunningRouter) -> None:
    """The case of the issue: it was a 500."""
    status, answer, _ = request(running, *WRITES["admin-state"], b'{"state": ["down"]}')
    assert status == 400
    assert answer["problems"] == [
        {"field": "state", "problem": "Input should be 'up', 'down' or 'drain', got [\"down\"]"}
    ]


@pytest.mark.parametrize("endpoint", ["status", "admin-state"])
def test_empty_body_is_400(running: RunningRouter, endpoint: str) -> None:
    status, answer, _ = request(running, *WRITES[endpoint], b"")
    assert status == 400 and "empty" in answer["error"]


@pytest.mark.parametrize("endpoint", list(WRITES))
@pytest.mark.parametrize(
    "content_type",
    ["application/xml", "multipart/form-data; boundary=x", "application/json; charset=latin-1"],
)
def test_a_body_that_is_not_json_by_its_type_is_400(
    running: RunningRouter, endpoint: str, content_type: str
) -> None:
    body = b'{"state": "down"}' if endpoint != "reload" else b"{}"
    status, answer, _ = request(running, *WRITES[endpoint], body, content_type=content_type)
    assert status == 400 and "Content-Type" in answer["error"]
    unchanged(running)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("endpoint", list(WRITES))
def test_oversize_body_is_413(running: RunningRouter, endpoint: str, chunked: bool) -> None:
    body = json.dumps({"state": "down", "pad": "x" * BODY_MAX}).encode()
    status, answer, _ = request(running, *WRITES[endpoint], body, chunked=chunked)
    assert status == 413
    assert "too large" in answer["error"] and str(BODY_MAX) in answer["error"]
    unchanged(running)


@pytest.mark.parametrize("endpoint", list(WRITES))
def test_the_token_is_checked_before_the_body(running: RunningRouter, endpoint: str) -> None:
    for token in (None, "wrong"):
        for body in (b'{"state": ["down"]}', b"not json", b"x" * (BODY_MAX + 1)):
            status, answer, _ = request(running, *WRITES[endpoint], body, token=token)
            assert status == 401 and answer["error"] == "missing or wrong bearer token"
    unchanged(running)


@pytest.mark.parametrize("path", GETS)
def test_unknown_query_parameters_are_400(running: RunningRouter, path: str) -> None:
    status, answer = get(running, f"{path}?verbose=1")
    assert status == 400
    assert answer["problems"][0]["field"] == "verbose"
    assert "unknown parameter" in answer["error"]


@pytest.mark.parametrize("endpoint", list(WRITES))
def test_writes_take_no_query_parameter(running: RunningRouter, endpoint: str) -> None:
    method, path = WRITES[endpoint]
    status, answer, _ = request(running, method, f"{path}?state=down", b'{"state": "down"}')
    assert status == 400 and "unknown parameter" in answer["error"]
    unchanged(running)


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ("limit=abc", "limit", "valid integer"),
        ("limit=1.5", "limit", "valid integer"),
        ("limit=", "limit", "valid integer"),
        ("limit=0", "limit", "greater than or equal to 1"),
        (f"limit={decisions.PAGE_MAX + 1}", "limit", f"less than or equal to {decisions.PAGE_MAX}"),
        ("limit=10&limit=20", "limit", "given more than once"),
        ("name=", "name", "at least 1 character"),
        ("node=" + "n" * 301, "node", "at most 300 characters"),
    ],
)
def test_bad_decisions_parameters_are_400(
    running: RunningRouter, query: str, field: str, says: str
) -> None:
    status, answer = get(running, f"/v1/decisions?{query}")
    assert status == 400, answer
    assert answer["problems"][0]["field"] == field and says in answer["problems"][0]["problem"]


def test_bad_status_page_refresh_is_400(running: RunningRouter) -> None:
    assert get(running, "/status?refresh=soon")[0] == 400
    assert get(running, "/status?refresh=0")[0] == 400
    status, _, kind = request(running, "GET", "/status?refresh=5")
    assert status == 200 and kind.startswith("text/html")


@pytest.mark.parametrize(
    ("cursor", "says"),
    [("garbage", "not a cursor this router gave"), ("eyJnIjoxfQ", "not a cursor this router gave")],
)
def test_a_forged_cursor_is_400(running: RunningRouter, cursor: str, says: str) -> None:
    status, answer = get(running, f"/v1/decisions?cursor={cursor}")
    assert status == 400 and says in answer["error"]


def test_unknown_routes_and_methods_are_json(running: RunningRouter) -> None:
    status, answer, kind = request(running, "GET", "/v1/nope")
    assert status == 404 and kind.startswith("application/json") and "Not Found" in answer["error"]
    status, answer, kind = request(running, "DELETE", "/v1/nodes")
    assert status == 405 and kind.startswith("application/json")
    status, answer, _ = request(
        running, *WRITES["admin-state"][:1], "/v1/nodes/no-such/admin-state", b'{"state": "down"}'
    )
    assert status == 404 and "no-such" in answer["error"]


def test_good_requests_still_work(running: RunningRouter) -> None:
    """The checks let the documented requests through, as curl -d and urllib send them."""
    for content_type in ("application/json", "application/x-www-form-urlencoded", None):
        status, answer, _ = request(
            running, *WRITES["admin-state"], b'{"state": "drain"}', content_type=content_type
        )
        assert status == 200 and answer["admin_state"] == "drain"
        status, answer, _ = request(
            running, *WRITES["admin-state"], b'{"state":"up"}', content_type=content_type
        )
        assert status == 200 and answer["admin_state"] is None
    status, answer, _ = request(running, *WRITES["status"], b'{"state": "draining"}')
    assert status == 200 and answer["state"] == "draining"
    status, answer, _ = request(running, *WRITES["status"], b'{"state": "serving"}')
    assert status == 200 and answer["state"] == "serving"
    for body in (b"", b"{}"):
        status, answer, _ = request(running, *WRITES["reload"], body)
        assert status == 200 and answer["result"] == "unchanged"
    unchanged(running)


# -- GET /v1/decisions, a page at a time --------------------------------------------------


def walk(router: RunningRouter, query: str = "", limit: int | None = None) -> list[dict]:
    pages, cursor = [], None
    while True:
        params = urllib.parse.parse_qsl(query)
        if limit is not None:
            params.append(("limit", str(limit)))
        if cursor is not None:
            params.append(("cursor", cursor))
        status, page = get(router, "/v1/decisions?" + urllib.parse.urlencode(params))
        assert status == 200, page
        pages.append(page)
        cursor = page["next"]
        if cursor is None:
            return pages


def answers_by_key(pages: list[dict]) -> dict[tuple[str, str], list]:
    """(policy, group key) -> the answer as node ids and shares, whatever the page."""
    out = {}
    for page in pages:
        ids = page["node_ids"]
        sets = [[ids[n] for n in row] for row in page["answer_sets"]]
        for pkey, policy in page["policies"].items():
            assert len(policy["answers"]) == len(page["groups"])
            for group, value in zip(page["groups"], policy["answers"]):
                entries = (
                    [[sets[value], 1.0]]
                    if isinstance(value, int)
                    else [[sets[s], w] for s, w in value]
                )
                out[(pkey, group["key"])] = entries
    return out


def test_pages_cover_every_group_exactly_once(running: RunningRouter) -> None:
    first = get(running, "/v1/decisions")[1]
    assert len(first["groups"]) == decisions.PAGE_DEFAULT  # the default limit
    total = first["total_groups"]
    assert total > 1000  # the sample has about 2000 groups
    small = walk(running, limit=300)
    big = walk(running, limit=decisions.PAGE_MAX)
    assert len(small) == -(-total // 300) and len(big) == -(-total // decisions.PAGE_MAX)
    assert all(len(p["groups"]) <= 300 for p in small)
    keys = [g["key"] for p in small for g in p["groups"]]
    assert len(keys) == total and len(set(keys)) == total
    assert keys == [g["key"] for p in big for g in p["groups"]]
    assert answers_by_key(small) == answers_by_key(big)
    # A page's answer sets are the ones its groups use, nothing else.
    for page in small:
        used = set()
        for policy in page["policies"].values():
            for value in policy["answers"]:
                used |= {value} if isinstance(value, int) else {s for s, _ in value}
        assert used == set(range(len(page["answer_sets"])))
    # The zone records come once, on the first page.
    assert "cdn.example." in small[0]["zones"] and all(p["zones"] == {} for p in small[1:])


def test_router_plan_joins_the_pages_into_the_whole_document(running: RunningRouter) -> None:
    whole = fetch_decisions(running.api)
    assert len(whole["groups"]) == get(running, "/v1/decisions?limit=1")[1]["total_groups"]
    pages = walk(running, limit=decisions.PAGE_MAX)
    assert answers_by_key([whole]) == answers_by_key(pages)
    assert set(whole) == {"generation", "node_ids", "nodes", "groups", "answer_sets", "policies",
                          "names", "zones", "rtt_samples"}  # fmt: skip


def test_filter_by_name(running: RunningRouter) -> None:
    for name in (
        "video.cdn.example.",
        "VIDEO.cdn.example",
    ):  # the trailing dot and case do not matter
        page = get(running, f"/v1/decisions?name={name}&limit=5")[1]
        assert page["names"] == {"video.cdn.example.": "cdn.example./video"}
        assert list(page["policies"]) == ["cdn.example./video"]
        assert len(page["groups"]) == 5
    status, answer = get(running, "/v1/decisions?name=nope.cdn.example.")
    assert status == 404 and "video.cdn.example." in answer["error"]
    status, answer = get(running, "/v1/decisions?name=" + "a" * 70 + ".example")
    assert status == 400 and answer["error"].startswith("name: not a domain name")


def test_filter_by_group(running: RunningRouter) -> None:
    key = get(running, "/v1/decisions?limit=50")[1]["groups"][42]["key"]
    page = get(running, "/v1/decisions?" + urllib.parse.urlencode({"group": key}))[1]
    assert [g["key"] for g in page["groups"]] == [key] and page["total_groups"] == 1
    assert page["next"] is None
    status, answer = get(running, "/v1/decisions?group=AS1/XX/0,0")
    assert status == 404 and "AS1/XX/0,0" in answer["error"]


def test_filter_by_node(running: RunningRouter) -> None:
    everything = answers_by_key(walk(running, limit=decisions.PAGE_MAX))
    with_node = {
        key
        for key, entries in everything.items()
        if any(ANSWERED_NODE in nodes for nodes, _ in entries)
    }
    groups = {group for _, group in with_node}
    pages = walk(running, f"node={ANSWERED_NODE}", limit=200)
    got = [g["key"] for p in pages for g in p["groups"]]
    assert len(got) == len(set(got)) and set(got) == groups and 0 < len(groups) < 2000
    assert pages[0]["total_groups"] == len(groups)
    # With a name too: only that policy's answers count.
    video = {group for pkey, group in with_node if pkey == "cdn.example./video"}
    pages = walk(running, f"node={ANSWERED_NODE}&name=video.cdn.example.", limit=1000)
    assert {g["key"] for p in pages for g in p["groups"]} == video
    status, answer = get(running, "/v1/decisions?node=no-such-node")
    assert status == 404 and "no-such-node" in answer["error"]


def test_a_cursor_is_for_its_filters_and_its_table(running: RunningRouter) -> None:
    first = get(running, f"/v1/decisions?node={ANSWERED_NODE}&limit=10")[1]
    cursor = first["next"]
    status, answer = get(running, f"/v1/decisions?cursor={cursor}&limit=10")
    assert status == 400 and "other filters" in answer["error"]
    # A new table in service: the walk goes on with the table it started on.
    generation = first["generation"]
    request(running, *WRITES["admin-state"], b'{"state": "down"}')
    try:
        assert get(running, "/v1/decisions?limit=1")[1]["generation"] > generation
        status, page = get(running, f"/v1/decisions?node={ANSWERED_NODE}&limit=10&cursor={cursor}")
        assert status == 200 and page["generation"] == generation
        # Tables move on: after KEPT_TABLES newer first pages, the old one is gone (410).
        for i in range(decisions.KEPT_TABLES):
            request(
                running, *WRITES["admin-state"], b'{"state": "%s"}' % (b"up" if i % 2 else b"drain")
            )
            get(running, "/v1/decisions?limit=1")
        status, answer = get(
            running, f"/v1/decisions?node={ANSWERED_NODE}&limit=10&cursor={cursor}"
        )
        assert status == 410 and "start again without a cursor" in answer["error"]
    finally:
        request(running, *WRITES["admin-state"], b'{"state": "up"}')
    unchanged(running)


# -- in process: an unexpected exception -------------------------------------------------


class Broken:
    """A supervisor whose every read fails."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"broken {name}")


def test_an_unexpected_exception_is_a_logged_500_json(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> list[tuple[int, str, dict]]:
        app = create_app(Broken(), "t" * 32)  # type: ignore[arg-type]
        out = []
        async with TestClient(TestServer(app)) as client:
            for path in ("/v1/nodes", "/v1/status", "/v1/decisions"):
                response = await client.get(path)
                out.append((response.status, response.content_type, await response.json()))
        return out

    with caplog.at_level(logging.ERROR, logger="router.api"):
        results = asyncio.run(run())
    for status, kind, body in results:
        assert (status, kind) == (500, "application/json")
        assert body == {"error": "internal error (the router logged it)"}
    assert sum(bool("failed" in r.getMessage() and r.exc_info) for r in caplog.records) == 3


def test_in_process_bad_input_never_reaches_the_supervisor() -> None:
    """Bad bodies are refused before any handler reads the supervisor (which would fail)."""

    async def run() -> list[int]:
        app = create_app(Broken(), "t" * 32)  # type: ignore[arg-type]
        headers = {"Authorization": "Bearer " + "t" * 32}
        out = []
        async with TestClient(TestServer(app)) as client:
            for body in (b'{"state": ["down"]}', b"[]", b"{", b'{"state": "down", "x": 1}'):
                response = await client.put(
                    f"/v1/nodes/{NODE}/admin-state", data=body, headers=headers
                )
                out.append(response.status)
            response = await client.put("/v1/status", data=b"x" * (BODY_MAX + 10), headers=headers)
            out.append(response.status)
        return out

    assert asyncio.run(run()) == [400, 400, 400, 400, 413]


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty token"):
        create_app(SimpleNamespace(), "")  # type: ignore[arg-type]
