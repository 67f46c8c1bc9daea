"""``GET /v1/demand`` a page at a time: the pages of a walk cover every group with demand
exactly once and join into the whole document (``router plan``'s ``fetch_demand`` gets what
``demand_json`` gives, key for key and in order), the filters select what they say, each bad
request has its status, and a walk reads one demand snapshot however the demand moves on.

The API runs in process on loopback over the sample deployment's steering model, with a
stand-in supervisor whose demand and routing table generation the tests change at will
(the demand of a real router changes only with observed queries)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from aiohttp import web

from router.api import decisions
from router.api.decisions import demand_json, demand_source, group_keys
from router.api.http import create_app
from router.config import load_deployment
from router.plan import fetch_demand
from router.steering.model import SteeringModel, compile_model

ZONES = Path(__file__).resolve().parent.parent / "zones"
VIDEO, WEB = "cdn.example./video", "cdn.example./web"


class StandIn:
    """The two things the demand endpoint reads of a supervisor: the config (its model and
    the planner's demand) and the routing table (its generation) in service."""

    def __init__(self, model: SteeringModel, demand: np.ndarray) -> None:
        self.config = SimpleNamespace(model=model, planner=SimpleNamespace(demand=demand))
        self.generation = 1

    def in_service(self) -> tuple[SimpleNamespace, SimpleNamespace]:
        return self.config, SimpleNamespace(generation=self.generation)

    def publish(self, demand: np.ndarray) -> None:
        """New demand, planned into a new routing table (as the publisher adopts a plan)."""
        self.config.planner.demand = demand
        self.generation += 1

    def reload(self) -> None:
        """A new config object with the same model and demand (a config reload)."""
        self.config = SimpleNamespace(model=self.config.model, planner=self.config.planner)
        self.generation += 1


@pytest.fixture(scope="module")
def model() -> SteeringModel:
    return compile_model(load_deployment(ZONES))


def some_demand(model: SteeringModel, seed: int) -> np.ndarray:
    """Demand on about 60% of the groups of each policy, not the same groups in each."""
    rng = np.random.default_rng(seed)
    shape = (len(model.policies), len(model.client_map.groups))
    return np.where(rng.random(shape) < 0.6, rng.random(shape) * 10.0, 0.0)


@pytest.fixture
def served(model: SteeringModel) -> Iterator[tuple[StandIn, str]]:
    """(the stand-in supervisor, the API's base URL on loopback), the API in a thread."""
    router = StandIn(model, some_demand(model, 1))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(router, "t" * 32))  # type: ignore[arg-type]
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield router, f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def get(base: str, query: str = "") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{base}/v1/demand?{query}", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def walk(base: str, query: str = "", limit: int | None = None, max_pages: int = 5000) -> list[dict]:
    pages, cursor = [], None
    for _ in range(max_pages):
        params = urllib.parse.parse_qsl(query)
        if limit is not None:
            params.append(("limit", str(limit)))
        if cursor is not None:
            params.append(("cursor", cursor))
        status, page = get(base, urllib.parse.urlencode(params))
        assert status == 200, page
        pages.append(page)
        cursor = page["next"]
        if cursor is None:
            return pages
    raise AssertionError(f"no last page after {max_pages} pages")


def joined(pages: list[dict]) -> dict:
    """The pages as one document, checking that no group comes twice."""
    whole = {key: pages[0][key] for key in ("generation", "source")}
    whole["policies"] = {key: {"total_gbps": p["total_gbps"], "groups": {}} for key, p in pages[0]["policies"].items()}  # fmt: skip
    for page in pages:
        assert page["generation"] == whole["generation"] and page["source"] == whole["source"]
        for key, policy in page["policies"].items():
            assert policy["total_gbps"] == whole["policies"][key]["total_gbps"]
            assert not set(policy["groups"]) & set(whole["policies"][key]["groups"])
            whole["policies"][key]["groups"].update(policy["groups"])
    return whole


def expected(router: StandIn, demand: np.ndarray | None = None) -> dict:
    model = router.config.model
    demand = router.config.planner.demand if demand is None else demand
    return demand_json(model, demand, demand_source(model, demand), router.generation)


def test_pages_cover_every_group_exactly_once(served: tuple[StandIn, str]) -> None:
    router, base = served
    demand = router.config.planner.demand
    with_demand = int((demand > 0).any(axis=0).sum())
    assert with_demand > 1000  # the sample has about 2000 groups
    status, first = get(base)
    assert status == 200 and first["total_groups"] == with_demand
    assert set(first) == {"generation", "source", "policies", "total_groups", "next"}
    # The default limit: 100 groups with demand in some policy.
    page_groups = set(first["policies"][VIDEO]["groups"]) | set(first["policies"][WEB]["groups"])
    assert len(page_groups) == decisions.PAGE_DEFAULT
    whole = expected(router)
    for limit in (7, 300, decisions.PAGE_MAX):
        pages = walk(base, limit=limit)
        assert len(pages) == -(-with_demand // limit)
        groups = [
            key
            for page in pages
            for key in dict.fromkeys([*page["policies"][VIDEO]["groups"], *page["policies"][WEB]["groups"]])
        ]  # fmt: skip
        assert len(groups) == len(set(groups)) == with_demand
        assert all(p["total_groups"] == with_demand for p in pages)
        # Joined, the pages are the whole document, the order of every dict included.
        assert json.dumps(joined(pages)) == json.dumps(whole)
    assert whole["source"] == "observed"
    assert whole["policies"][VIDEO]["total_gbps"] == pytest.approx(float(demand[0].sum()))


def test_the_prior_is_paged_too(served: tuple[StandIn, str], model: SteeringModel) -> None:
    router, base = served
    prior = np.array([p.demand_prior for p in model.policies]).reshape(
        router.config.planner.demand.shape
    )
    router.publish(prior)
    pages = walk(base, limit=500)
    assert pages[0]["source"] == decisions.PRIOR
    assert json.dumps(joined(pages)) == json.dumps(expected(router))


def test_router_plan_joins_the_pages_into_the_whole_document(served: tuple[StandIn, str]) -> None:
    router, base = served
    assert json.dumps(fetch_demand(base)) == json.dumps(expected(router))
    # Fewer groups than a page: the first page is the last.
    small = np.zeros_like(router.config.planner.demand)
    small[1, [3, 5, 8]] = [1.0, 2.0, 0.5]
    router.publish(small)
    assert get(base, "limit=1000")[1]["next"] is None
    assert json.dumps(fetch_demand(base)) == json.dumps(expected(router))
    # No demand at all: every policy, with its zero total and no groups.
    router.publish(np.zeros_like(small))
    assert fetch_demand(base)["policies"] == {
        VIDEO: {"total_gbps": 0.0, "groups": {}},
        WEB: {"total_gbps": 0.0, "groups": {}},
    }


def test_filter_by_name(served: tuple[StandIn, str]) -> None:
    router, base = served
    whole = expected(router)
    for name in ("video.cdn.example.", "VIDEO.cdn.example"):  # trailing dot and case
        pages = walk(base, f"name={name}", limit=250)
        assert all(list(p["policies"]) == [VIDEO] for p in pages)
        assert joined(pages)["policies"] == {VIDEO: whole["policies"][VIDEO]}
        assert pages[0]["total_groups"] == int((router.config.planner.demand[0] > 0).sum())
    status, answer = get(base, "name=nope.cdn.example.")
    assert status == 404 and "video.cdn.example." in answer["error"]
    status, answer = get(base, "name=" + "a" * 70 + ".example")
    assert status == 400 and answer["error"].startswith("name: not a domain name")


def test_filter_by_group(served: tuple[StandIn, str], model: SteeringModel) -> None:
    router, base = served
    keys = group_keys(model.client_map)
    demand = router.config.planner.demand
    both = int(np.flatnonzero((demand > 0).all(axis=0))[0])
    page = get(base, urllib.parse.urlencode({"group": keys[both]}))[1]
    assert page["total_groups"] == 1 and page["next"] is None
    assert page["policies"][VIDEO]["groups"] == {keys[both]: float(demand[0, both])}
    assert page["policies"][WEB]["groups"] == {keys[both]: float(demand[1, both])}
    assert page["policies"][VIDEO]["total_gbps"] == float(demand[0].sum())  # the whole total
    # A group with demand in one policy only, with the other policy's name: nothing.
    video_only = int(np.flatnonzero((demand[0] > 0) & (demand[1] == 0))[0])
    query = urllib.parse.urlencode({"group": keys[video_only], "name": "www.cdn.example"})
    page = get(base, query)[1]
    assert page["total_groups"] == 0 and page["policies"] == {
        WEB: {"total_gbps": float(demand[1].sum()), "groups": {}}
    }
    status, answer = get(base, "group=AS1/XX/0,0")
    assert status == 404 and "AS1/XX/0,0" in answer["error"]


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ("limit=abc", "limit", "valid integer"),
        ("limit=0", "limit", "greater than or equal to 1"),
        (f"limit={decisions.PAGE_MAX + 1}", "limit", f"less than or equal to {decisions.PAGE_MAX}"),
        ("limit=10&limit=20", "limit", "given more than once"),
        ("group=", "group", "at least 1 character"),
        ("name=" + "n" * 301, "name", "at most 300 characters"),
        ("node=tef-mad-1", "node", "unknown parameter"),
    ],
)
def test_bad_parameters_are_400(
    served: tuple[StandIn, str], query: str, field: str, says: str
) -> None:
    status, answer = get(served[1], query)
    assert status == 400, answer
    assert answer["problems"][0]["field"] == field and says in answer["problems"][0]["problem"]


def test_bad_cursors_are_400(served: tuple[StandIn, str]) -> None:
    _, base = served
    for cursor in ("garbage", "eyJnIjoxfQ", decisions.encode_cursor(1, 5, "x")[:-3]):
        status, answer = get(base, f"cursor={cursor}")
        assert status == 400 and "not a cursor this router gave" in answer["error"], answer
    cursor = get(base, "name=video.cdn.example&limit=10")[1]["next"]
    status, answer = get(base, f"cursor={cursor}&limit=10")
    assert (
        status == 400 and "other filters" in answer["error"] and "name and group" in answer["error"]
    )
    # The last served group past the end of the client map.
    filters = decisions._filters_id("demand", None, None)
    status, answer = get(base, "cursor=" + decisions.encode_cursor(1, 10**9, filters))
    assert status == 400 and "past the last group" in answer["error"]


def test_a_decisions_cursor_is_not_a_demand_cursor(served: tuple[StandIn, str]) -> None:
    router, base = served
    first = get(base, "limit=10")[1]
    ours = decisions.decode_cursor(first["next"])
    theirs = decisions.encode_cursor(
        router.generation, ours[1], decisions._filters_id(None, None, None)
    )
    status, answer = get(base, f"limit=10&cursor={theirs}")
    assert status == 400 and "other filters" in answer["error"]


def test_a_walk_reads_one_demand_across_demand_changes(served: tuple[StandIn, str]) -> None:
    router, base = served
    before, generation = expected(router), router.generation
    pages = [get(base, "limit=400")[1]]
    # The planner's array changed in place, then new demand in a new table: the walk goes
    # on with the demand its first page saw.
    router.config.planner.demand *= 3.0
    router.publish(some_demand(router.config.model, 2))
    while pages[-1]["next"] is not None and len(pages) < 100:
        status, page = get(base, f"limit=400&cursor={pages[-1]['next']}")
        assert status == 200 and page["generation"] == generation, page
        pages.append(page)
    assert len(pages) > 2 and json.dumps(joined(pages)) == json.dumps(before)
    # A walk started now reads the demand of now.
    now = walk(base, limit=400)
    assert now[0]["generation"] == router.generation
    assert json.dumps(joined(now)) == json.dumps(expected(router))
    assert joined(now)["policies"] != before["policies"]


def test_a_first_page_of_a_kept_table_reads_its_snapshot(served: tuple[StandIn, str]) -> None:
    """Demand that moved without a new table: a walk on that table still reads the snapshot
    the earlier walks on it read, so two walks of one generation agree."""
    router, base = served
    first = walk(base, limit=600)
    router.config.planner.demand = router.config.planner.demand * 2.0
    second = walk(base, limit=600)
    assert second[0]["generation"] == first[0]["generation"]
    assert json.dumps(joined(second)) == json.dumps(joined(first))


def test_a_walk_of_a_forgotten_snapshot_is_410(served: tuple[StandIn, str]) -> None:
    router, base = served
    cursor = get(base, "limit=10")[1]["next"]
    for i in range(decisions.KEPT_TABLES - 1):  # newer walks: the first one's is still kept
        router.publish(some_demand(router.config.model, 10 + i))
        assert get(base, "limit=10")[0] == 200
    assert get(base, f"limit=10&cursor={cursor}")[0] == 200
    router.publish(some_demand(router.config.model, 99))
    assert get(base, "limit=10")[0] == 200  # the KEPT_TABLES-th newer walk
    status, answer = get(base, f"limit=10&cursor={cursor}")
    assert status == 410 and "start again without a cursor" in answer["error"], answer
    # A config reload forgets every snapshot of the old config.
    cursor = get(base, "limit=10")[1]["next"]
    router.reload()
    status, answer = get(base, f"limit=10&cursor={cursor}")
    assert status == 410 and "is no longer kept" in answer["error"]
