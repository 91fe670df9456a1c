"""The one table of coloring vectors that the Python engine, the Lua (via lupa) and a real Envoy
must agree on: a config using every kind of matcher, and requests built from pools of tricky
values (repeated headers, cookie whitespace, form-encoded queries, invalid UTF-8 escapes,
sticky keys on both sides of each percentage). Expected lanes are never written here: they
come from the Python engine (`mesh_config.vectors.python_lanes`) at test time.
"""

from __future__ import annotations

import random
from functools import cache
from typing import Final

from lane.core.config import LaneConfig
from lane.core.config_load import parse_config
from mesh_config.vectors import Vector

__all__ = ["CHAIN_CONFIG", "CONFORMANCE_CONFIG", "RANDOM_RULE_QUERY", "conformance_config", "conformance_vectors"]

CONFORMANCE_CONFIG: Final = r"""
tag:
  header: x-mse-tag
  baggage_key: lane
lanes:
  gray: {}
  dev-alice: {fallback: gray}
  canary: {}
  frozen: {strict: true}
entry: a
coloring:
  - name: alice
    lane: dev-alice
    match:
      headers:
        - {name: X-Dev, exact: alice}
  - name: ua-regex
    lane: gray
    match:
      headers:
        - {name: User-Agent, regex: '(?:xiao|da)ming(-\d{1,3})?'}
  - name: beta-cookie
    lane: gray
    match:
      cookies:
        - {name: beta, exact: "on"}
  - name: query-lane
    lane: canary
    match:
      query:
        - {name: lane, regex: 'c[a-z]*|ç[^0-9]?'}
  - name: qa-team
    lane: frozen
    match:
      headers:
        - {name: x-team, prefix: "qa-"}
        - {name: x-skip, absent: true}
  - name: region-cookie-share
    lane: canary
    match:
      headers:
        - {name: x-region, present: true}
    percentage: {percent: 30, key: {cookie: uid}, salt: "s1"}
  - name: user-share
    lane: gray
    percentage: {percent: 50, key: {header: x-user}}
  - name: query-share
    lane: canary
    match:
      query:
        - {name: k, present: true}
    percentage: {percent: 20, key: {query: u}, salt: "q"}
  - name: email-ish
    lane: gray
    match:
      cookies:
        - {name: who, regex: '[\w.+-]+@(example|test)\.(com|org)$'}
  - name: coin
    lane: gray
    match:
      query:
        - {name: rnd, present: true}
    percentage: {percent: 50}
services:
  a:
    instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"], dev-alice: ["127.0.0.1:3"]}
  b:
    instances: {base: ["127.0.0.1:4"]}
  c:
    instances: {base: ["127.0.0.1:5"], gray: ["127.0.0.1:6"], canary: ["127.0.0.1:7"]}
  d:
    instances: {base: ["127.0.0.1:8"], frozen: ["127.0.0.1:9"]}
"""

RANDOM_RULE_QUERY: Final = "rnd=1"

# A fallback chain dev-alice -> gray -> base and a strict lane over services with only some lanes.
CHAIN_CONFIG: Final = """
label_key: track
lanes:
  gray: {}
  dev-alice: {fallback: gray}
  hotfix: {strict: true}
entry: front
mesh:
  namespace: shop
  gateway: {name: shop-gw, hosts: [shop.example.com], namespace: gateways}
  baggage_to_header: false
services:
  front:    {instances: {base: ["127.0.0.1:1"], gray: ["127.0.0.1:2"], dev-alice: ["127.0.0.1:3"]}}
  cart:     {instances: {base: ["127.0.0.1:4"], gray: ["127.0.0.1:5"]}}
  pay:      {instances: {base: ["127.0.0.1:6"], dev-alice: ["127.0.0.1:7"], hotfix: ["127.0.0.1:8"]}}
  ledger:   {instances: {base: ["127.0.0.1:9"]}}
"""

_HEADER_POOL: Final[tuple[tuple[str, str], ...]] = (
    ("X-Dev", "alice"), ("x-dev", "alice"), ("x-dev", "Alice"), ("x-dev", "alice "), ("x-dev", "alicex"),
    ("User-Agent", "xiaoming"), ("user-agent", "daming-12"), ("User-Agent", "xiaoming-1234"),
    ("User-Agent", "Mozilla xiaoming"), ("User-Agent", "damingé"), ("User-Agent", "daming-"),
    ("x-team", "qa-1"), ("x-team", "qa"), ("x-team", "dev-qa-1"), ("x-skip", "1"), ("x-skip", ""),
    ("x-region", "eu"), ("x-region", ""),
    ("x-mse-tag", "gray"), ("x-mse-tag", "canary"), ("x-mse-tag", "Not A Lane"),
    ("baggage", "lane=gray"), ("baggage", "other=1,lane=dev-alice;p=1"), ("baggage", "lane=%20canary"),
)
_COOKIE_POOL: Final[tuple[str, ...]] = (
    "beta=on", " beta = on ", "beta=off; beta=on", "a=1;beta=on", "beta=\u00a0on\u2003", "beta=on=1",
    "beta", "=on", "uid=user-1", "uid=user-2; beta=off", "uid=", "who=ann.lee+x@example.com",
    "who=bob@test.org", "who=bob@test.org\u00a0", "who=é@example.com", "who=x@example.net",
)
_QUERY_POOL: Final[tuple[str, ...]] = (
    "lane=canary", "lane=c+a", "lane=%63anary", "lane=ca%ZZ", "lane=&lane=canary", "lane", "lane=C",
    "lane=%C3%A7", "lane=%C3%A7x", "lane=%C3%A71", "lane=%C3", "lane=%E4%B8", "lane=%E4%B8%AD",
    "k=1&u=user%2B1", "k&u=%E4%B8", "k=1&u=a+b", "k=1", "u=zz&k", "rnd=1",
)


@cache
def conformance_config() -> LaneConfig:
    return parse_config(CONFORMANCE_CONFIG, "conformance.yaml")


def _keyed(rng: random.Random, i: int) -> list[Vector]:
    """Sticky keys for each keyed percentage, both inside and outside the share."""
    key = f"user-{i}-{rng.randrange(10**6)}"
    return [
        Vector(f"share-header-{i}", (("x-user", key),)),
        Vector(f"share-cookie-{i}", (("x-region", "eu"), ("cookie", f"uid={key}"))),
        Vector(f"share-query-{i}", (), f"k=1&u={key}"),
    ]


@cache
def conformance_vectors() -> tuple[Vector, ...]:
    """Deterministic vectors: pool combinations plus sticky keys (>= 200, excluding random ones)."""
    rng = random.Random(20240531)
    out: list[Vector] = [Vector("empty")]
    for i in range(160):
        headers = rng.sample(_HEADER_POOL, rng.randrange(0, 4))
        cookies = [("cookie", c) for c in rng.sample(_COOKIE_POOL, rng.randrange(0, 3))]
        query = "&".join(rng.sample(_QUERY_POOL, rng.randrange(0, 3)))
        mixed = headers + cookies
        rng.shuffle(mixed)
        out.append(Vector(f"mix-{i}", tuple(mixed), query))
    for i in range(40):
        out.extend(_keyed(rng, i))
    out.append(Vector("repeated-dev-header", (("x-dev", "alice"), ("x-dev", "alice"))))
    out.append(Vector("repeated-cookie-headers", (("cookie", "a=1"), ("cookie", "beta=on"))))
    out.append(Vector("user-agent-and-alice", (("user-agent", "xiaoming"), ("x-dev", "alice"))))
    return tuple(out)
