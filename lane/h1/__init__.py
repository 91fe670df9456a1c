"""The fast HTTP/1.1 forwarding core: llhttp (httptools) parsing on plain asyncio protocols.

Why not aiohttp's server and ``ClientSession`` per hop: a proxy pays both on every request, and
most of their cost is generality a proxy does not use (routing tables, request objects, cookie
jars, URL objects, per-request timers). This core keeps one parser per connection, keep-alive
pools per upstream, bodies relayed chunk by chunk with transport-level flow control, and the
same header logic as the aiohttp core (`lane.proxy`, `lane.wire`, `lane.responses`), which stays
for what it does better: WebSocket upgrades are handed to it on the same connection.

* `lane.h1.body`: what a request body looks like to the upstream client (`BodySource`);
* `lane.h1.upstream`: keep-alive pools and `Upstreams.send` (client side);
* `lane.h1.server`: the server protocol, `Request` and `Responder` (server side).
* `lane.h1.limits`: what a listener may hold at once and how it sheds the rest (`Limits`).
"""
