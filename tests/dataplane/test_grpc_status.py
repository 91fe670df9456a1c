"""`lane.dataplane.grpc_status`: a proxy's own answer in the form a gRPC client reads.

The end-to-end behaviour (a strict lane is UNAVAILABLE with its reason, through real processes) is in
tests/dataplane/test_grpc_lanes.py; here, the mapping and the encoding every such answer relies on.
"""

from __future__ import annotations

import urllib.parse

import pytest
from multidict import CIMultiDict

from lane.dataplane.grpc_status import grpc_error_headers, is_grpc, percent_encode


@pytest.mark.parametrize(("kind", "grpc"), [
    ("application/grpc", True), ("application/grpc+proto", True), ("application/grpc;charset=utf-8", True),
    ("application/grpc-web", False), ("application/grpc-web+proto", False), ("application/json", False), ("", False),
])
def test_only_grpc_requests_get_grpc_errors(kind: str, grpc: bool) -> None:
    assert is_grpc({"content-type": kind} if kind else {}) is grpc


@pytest.mark.parametrize(("status", "code"), [(503, "14"), (502, "14"), (504, "4"), (403, "7"), (500, "13"), (418, "2")])
def test_http_statuses_map_to_the_grpc_codes_clients_act_on(status: int, code: str) -> None:
    headers = grpc_error_headers(status, "why", CIMultiDict({"x-lane-path": "a@none", "Content-Type": "text/plain"}))
    assert headers["grpc-status"] == code
    assert headers["content-type"] == "application/grpc" and len(headers.getall("content-type")) == 1
    assert headers["x-lane-path"] == "a@none"  # lane metadata travels with the error


def test_grpc_message_is_percent_encoded_utf8_and_decodes_back() -> None:
    text = "lane: upstream 10.0.0.1:80 timed out — 100% spent\r\n"
    encoded = percent_encode(text)
    assert all(0x20 <= ord(c) < 0x7F for c in encoded) and "%25" in encoded and "—" not in encoded
    assert urllib.parse.unquote(encoded, encoding="utf-8") == text
