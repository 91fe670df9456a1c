'use strict';
/*
 * A Node.js service instrumented the way the OpenTelemetry JS docs show: NodeTracerProvider with W3C
 * tracecontext + W3C baggage propagators and the http instrumentation. It never copies a header by
 * hand: its outgoing calls carry exactly what the SDK propagates (traceparent, tracestate, baggage),
 * which is the point of the lane tests (tests/sidecar/test_real_apps.py): a real app that drops x-request-id,
 * B3 and the lane tag header.
 *
 * Configured by environment (the same variables as the Python test apps):
 *   APP_SERVICE, APP_LANE   what it reports about itself
 *   APP_PORT                port on 127.0.0.1 (0: a free one)
 *   APP_READY_FILE          written as {"port": N} once listening (atomically, via rename)
 *   APP_NEXT                comma-separated services to call on every request, in order
 *   APP_CALL_VIA            "proxy": absolute-form request to HTTP_PROXY (what HTTP_PROXY-aware
 *                           clients send); "host": to APP_OUTBOUND with "Host: <service>"
 *   HTTP_PROXY / APP_OUTBOUND  the sidecar's outbound listener (http://HOST:PORT / HOST:PORT)
 * No exporter: spans are made (so traceparent carries this app's own span id) and dropped.
 */

const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');
const { CompositePropagator, W3CTraceContextPropagator, W3CBaggagePropagator } = require('@opentelemetry/core');
const { registerInstrumentations } = require('@opentelemetry/instrumentation');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');

const provider = new NodeTracerProvider({ spanProcessors: [] });
provider.register({
  propagator: new CompositePropagator({
    propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
  }),
});
registerInstrumentations({ instrumentations: [new HttpInstrumentation()] });

// Loaded after the instrumentation is registered, so `http` is the patched module.
const http = require('http');
const fs = require('fs');

const SEEN = [
  'x-mse-tag', 'baggage', 'traceparent', 'tracestate', 'x-request-id', 'x-b3-traceid', 'x-b3-spanid',
  'x-b3-parentspanid', 'x-b3-sampled', 'x-b3-flags', 'b3', 'uber-trace-id', 'sw8',
];
const CALL_TIMEOUT_MS = 10000;

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) {
      console.error(`node_otel app: ${name} is required`);
      process.exit(2);
    }
    return fallback;
  }
  return value;
}

const service = env('APP_SERVICE');
const lane = env('APP_LANE');
const next = env('APP_NEXT', '').split(',').map((s) => s.trim()).filter(Boolean);
const via = env('APP_CALL_VIA', 'proxy');
if (next.length && via !== 'proxy' && via !== 'host') {
  console.error(`node_otel app: APP_CALL_VIA must be "proxy" or "host", not ${JSON.stringify(via)}`);
  process.exit(2);
}

function outboundTarget(name) {
  if (via === 'proxy') {
    const proxy = new URL(env('HTTP_PROXY'));
    return { host: proxy.hostname, port: Number(proxy.port || 80), path: `http://${name}/`, headers: { host: name } };
  }
  const [host, port] = env('APP_OUTBOUND').split(':');
  return { host, port: Number(port), path: '/', headers: { host: name } };
}

function call(name) {
  return new Promise((resolve) => {
    const target = outboundTarget(name);
    const req = http.request({ ...target, method: 'GET', timeout: CALL_TIMEOUT_MS }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let answer;
        try {
          answer = JSON.parse(text);
        } catch (err) {
          answer = text.slice(0, 500);
        }
        resolve({ service: name, status: res.statusCode, answer });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) => resolve({ service: name, status: 599, error: String(err).slice(0, 300) }));
    req.end();
  });
}

const server = http.createServer(async (req, res) => {
  if (req.url === '/healthz') {
    res.end('ok\n');
    return;
  }
  req.resume();
  const received = {};
  for (const name of SEEN) {
    if (req.headers[name] !== undefined) received[name] = req.headers[name];
  }
  const calls = [];
  for (const name of next) calls.push(await call(name));
  const failed = calls.some((c) => c.status >= 500);
  const body = JSON.stringify({ service, lane, app: 'node-otel', received, calls });
  res.writeHead(failed ? 502 : 200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});

server.listen(Number(env('APP_PORT', '0')), '127.0.0.1', () => {
  const readyFile = process.env.APP_READY_FILE;
  if (readyFile) {
    fs.writeFileSync(`${readyFile}.tmp`, JSON.stringify({ port: server.address().port }));
    fs.renameSync(`${readyFile}.tmp`, readyFile);
  }
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
