"""Optional OpenTelemetry spans of the data plane, exported over OTLP/HTTP when an endpoint is set.

Off unless ``--otlp-endpoint URL`` is given or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the standard variables, so ``lane demo`` children trace
too); when off, every call here is a no-op on a shared object, so the proxies pay nothing.

When on, each proxied request gets one span whose parent is the request's incoming
``traceparent`` and which then becomes the ``traceparent`` the request leaves with, so a trace
stays one tree across the gateway, every sidecar and the apps:

* the gateway and a sidecar's inbound side record a SERVER span (``gateway a``, ``inbound b``);
* a sidecar's outbound side records a CLIENT span (``outbound c``): it makes the app's call, the
  way Envoy's egress spans do, so trace UIs pair it with the next sidecar's SERVER span. An app
  that forwards no ``traceparent`` (only, say, ``x-request-id``) still gets its calls attached to
  the request it was serving: the sidecar finds that request's span through the hop collection.

Attributes: ``lane.dataplane.upgrades``, ``lane.service``, ``lane.requested``, ``lane.served``,
``lane.fallback`` (the `FallbackReason`, only when it fell back), ``lane.instance``, ``lane.rule``
(gateway, when a rule chose the lane), ``http.request.method``, ``url.path``,
``http.response.status_code`` and ``error.type`` on failures (5xx are errors). A span ends when
the answer has been relayed. WebSocket upgrades are not traced.

The `TracerProvider` is private to the process's `Tracing` object, never the global one, and
`open_tracing` owns it: spans are batched (`BatchSpanProcessor`, tuned by the usual
``OTEL_BSP_*`` variables) and flushed when the proxy stops (SIGTERM: after the drain). Headers,
TLS and compression of the export come from the usual ``OTEL_EXPORTER_OTLP_*`` variables;
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` override the default service name.

Importing this module imports neither the OpenTelemetry SDK, the OTLP exporter, the trace API nor
yarl: they are imported when tracing is turned on (an endpoint is given), so a proxy that does
not trace does not carry them in memory (the SDK alone is several MiB of a sidecar's RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # only for types: imported for real once tracing is on
    from multidict import CIMultiDict
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "OTLP_ENV",
    "RequestSpan",
    "Tracing",
    "add_tracing_arguments",
    "open_tracing",
    "otlp_traces_url",
    "otlp_url",
]

log = logging.getLogger(__name__)

# Read in this order, as the OTLP exporter specification says: the per-signal URL is used as is,
# the base URL gets the signal path appended.
OTLP_ENV: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TRACES_PATH: Final = "/v1/traces"
_OFF: Final = frozenset({"", "none", "off"})


@functools.cache
def _propagator() -> TraceContextTextMapPropagator:
    """The W3C trace-context propagator, made (and its module imported) on first use."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def _span_kind(kind: SpanKind | str) -> SpanKind:
    from opentelemetry.trace import SpanKind

    return kind if isinstance(kind, SpanKind) else SpanKind[kind.upper()]


def otlp_url(text: str) -> str:
    """argparse type of ``--otlp-endpoint``: an http(s) URL, or ``none`` to turn tracing off."""
    if text.strip().lower() in _OFF:
        return "none"
    from yarl import URL

    url = URL(text.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"expected an http(s) URL such as http://127.0.0.1:4318, got {text!r}")
    return str(url)


def otlp_traces_url(flag: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The URL spans are posted to, or None when tracing is off.

    ``--otlp-endpoint`` wins; a URL without a path (``http://collector:4318``) gets ``/v1/traces``,
    one with a path is used as is. Without the flag: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as is,
    else ``OTEL_EXPORTER_OTLP_ENDPOINT`` plus ``/v1/traces``. ``--otlp-endpoint none`` turns it off.
    """
    if flag is not None:
        if flag.strip().lower() in _OFF:
            return None
        from yarl import URL

        url = URL(flag)
        return str(url.with_path(TRACES_PATH)) if url.path in ("", "/") else str(url)
    traces, base = (environ.get(name, "").strip() for name in OTLP_ENV)
    if traces:
        return traces
    if base:
        return base.rstrip("/") + TRACES_PATH
    return None


def add_tracing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--otlp-endpoint", type=otlp_url, default=None, metavar="URL",
        help="export a span per proxied request over OTLP/HTTP to URL (http://HOST:4318 gets /v1/traces); "
        f"default: ${OTLP_ENV[0]}, else ${OTLP_ENV[1]}; off when unset or 'none'",
    )


class RequestSpan:
    """The span of one proxied request; every method is a no-op when tracing is off."""

    __slots__ = ("_span",)

    def __init__(self, span: Span | None) -> None:
        self._span = span

    @property
    def context(self) -> Context | None:
        """A context with this span as the current one: the parent of calls made on its behalf."""
        if self._span is None:
            return None
        from opentelemetry import trace

        return trace.set_span_in_context(self._span)

    def inject(self, headers: CIMultiDict[str]) -> None:
        """Make this span the parent the request leaves with (``traceparent``, ``tracestate``)."""
        if self._span is not None:
            from opentelemetry import trace

            _propagator().inject(headers, context=trace.set_span_in_context(self._span))

    def routed(self, served: str, fallback: str | None, instance: str | None) -> None:
        if self._span is None:
            return
        self._span.set_attribute("lane.served", served)
        if fallback:
            self._span.set_attribute("lane.fallback", fallback)
        if instance:
            self._span.set_attribute("lane.instance", instance)

    def answered(self, status: int, error: str | None = None) -> None:
        if self._span is None:
            return
        self._span.set_attribute("http.response.status_code", status)
        if error is not None or status >= 500:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute("error.type", error or str(status))
            self._span.set_status(Status(StatusCode.ERROR))


_NO_SPAN: Final = RequestSpan(None)
_NO_SPAN_CONTEXT: Final = nullcontext(_NO_SPAN)  # reusable: nullcontext keeps no state between uses


class Tracing:
    """The tracer of one proxy process: a private provider exporting batches, or nothing."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("lane") if provider is not None else None

    @classmethod
    def exporting(cls, exporter: SpanExporter, service_name: str,
                  attributes: Mapping[str, str] | None = None) -> Tracing:
        """Spans batched to *exporter*, under *service_name* unless the OTEL_* variables name one."""
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource_attributes = dict(attributes or {})
        if str(Resource.create().attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource_attributes[SERVICE_NAME] = service_name
        provider = TracerProvider(resource=Resource.create(resource_attributes))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def span(
        self, proxy: str, service: str, method: str, path: str, headers: CIMultiDict[str], *, requested: str,
        kind: SpanKind | str = "server", parent: Context | None = None, rule: str | None = None,
    ) -> AbstractContextManager[RequestSpan]:
        """The span of one request, child of the ``traceparent`` in *headers* (else of *parent*).

        *kind* is a `SpanKind` or its name (``"server"``, ``"client"``): a caller that passes the
        name need not import the trace API, which only matters when tracing is on. With tracing off
        this is one shared no-op context: a generator-based one per request cost ~2% of a request.
        """
        if self._tracer is None:
            return _NO_SPAN_CONTEXT
        return self._span(proxy, service, method, path, headers, requested=requested, kind=kind, parent=parent,
                          rule=rule)

    @contextmanager
    def _span(
        self, proxy: str, service: str, method: str, path: str, headers: CIMultiDict[str], *, requested: str,
        kind: SpanKind | str, parent: Context | None, rule: str | None,
    ) -> Iterator[RequestSpan]:
        assert self._tracer is not None
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        context = _propagator().extract(headers)
        if not trace.get_current_span(context).get_span_context().is_valid and parent is not None:
            context = parent
        attributes: dict[str, str] = {"lane.proxy": proxy, "lane.service": service, "lane.requested": requested,
                                      "http.request.method": method, "url.path": path}
        if rule is not None:
            attributes["lane.rule"] = rule
        span = self._tracer.start_span(f"{proxy} {service}", context=context, kind=_span_kind(kind),
                                       attributes=attributes)
        try:
            yield RequestSpan(span)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    async def shutdown(self) -> None:
        """Flush what is batched and stop exporting (blocking I/O, so off the event loop)."""
        if self.provider is not None:
            await asyncio.to_thread(self.provider.shutdown)


@asynccontextmanager
async def open_tracing(
    url: str | None, service_name: str, attributes: Mapping[str, str] | None = None
) -> AsyncIterator[Tracing]:
    """The process's `Tracing` for the lifetime of the block: OTLP/HTTP to *url*, or off when None."""
    if url is None:
        yield Tracing()
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    tracing = Tracing.exporting(OTLPSpanExporter(endpoint=url), service_name, attributes)
    log.info("tracing: exporting a span per request to %s", url)
    try:
        yield tracing
    finally:
        await tracing.shutdown()
