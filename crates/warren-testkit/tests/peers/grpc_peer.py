"""A real gRPC server and client (PyPI `grpcio`) for the upstream HTTP/2 tests.

`grpc_peer.py server`: serves `warren.test.Echo` over cleartext HTTP/2 (h2c, prior knowledge),
or over TLS when TLS_CERT and TLS_KEY name PEM files, on 127.0.0.1 and prints `PORT <port>`. Methods (raw bytes, no generated code):
- `Unary` (unary-unary): answers `echo:<request>` with trailing metadata `x-trailer: done`,
- `Stream` (unary-stream): the request is a count N; answers N messages `part-<i>`,
- `Fail` (unary-unary): ends with status NOT_FOUND and details `no such thing`.

`grpc_peer.py sdk`: serves the server's port through ngrok's Python SDK (PyPI `ngrok`) with
`app_protocol("http2")` on WARREN_HOST (WARREN_CONNECT, WARREN_CA, WARREN_TOKEN, UPSTREAM);
prints `URL <url>` and keeps the session until stdin closes.

`grpc_peer.py client`: calls them through the edge over TLS (WARREN_ADDR, WARREN_HOST as the
TLS server name and :authority, WARREN_CA) and prints one line per call:
`UNARY <answer> <x-trailer>`, `STREAM <count> <last>`, `FAIL <code name> <details>`.
"""

import os
import sys
from concurrent import futures

import grpc


def serve():
    def unary(request, context):
        context.set_trailing_metadata((("x-trailer", "done"),))
        return b"echo:" + request

    def stream(request, context):
        for i in range(int(request.decode())):
            yield ("part-%d" % i).encode()

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    handler = grpc.method_handlers_generic_handler(
        "warren.test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    if os.environ.get("TLS_CERT"):
        # HTTP/2 over TLS (ALPN h2), with the test's certificate.
        with open(os.environ["TLS_CERT"], "rb") as c, open(os.environ["TLS_KEY"], "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("PORT %d" % port, flush=True)
    # Runs until the test closes stdin.
    sys.stdin.read()
    server.stop(0)


def client():
    host = os.environ["WARREN_HOST"]
    with open(os.environ["WARREN_CA"], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = [("grpc.ssl_target_name_override", host), ("grpc.default_authority", host)]
    with grpc.secure_channel(os.environ["WARREN_ADDR"], creds, options=options) as ch:
        ident = lambda b: b
        unary = ch.unary_unary("/warren.test.Echo/Unary", request_serializer=ident, response_deserializer=ident)
        answer, call = unary.with_call(b"hello", timeout=10)
        trailer = dict(call.trailing_metadata() or ()).get("x-trailer", "-")
        print("UNARY %s %s" % (answer.decode(), trailer), flush=True)
        stream = ch.unary_stream("/warren.test.Echo/Stream", request_serializer=ident, response_deserializer=ident)
        parts = [p.decode() for p in stream(b"50", timeout=10)]
        print("STREAM %d %s" % (len(parts), parts[-1] if parts else "-"), flush=True)
        fail = ch.unary_unary("/warren.test.Echo/Fail", request_serializer=ident, response_deserializer=ident)
        try:
            fail(b"x", timeout=10)
            print("FAIL none -", flush=True)
        except grpc.RpcError as e:
            print("FAIL %s %s" % (e.code().name, e.details()), flush=True)


def sdk():
    import asyncio

    import ngrok

    async def main():
        with open(os.environ["WARREN_CA"], "rb") as f:
            ca = f.read()
        builder = ngrok.SessionBuilder().authtoken(os.environ["WARREN_TOKEN"])
        session = await builder.server_addr(os.environ["WARREN_CONNECT"]).ca_cert(bytearray(ca)).connect()
        listener = (
            await session.http_endpoint()
            .domain(os.environ["WARREN_HOST"])
            .app_protocol("http2")
            .listen_and_forward("http://" + os.environ["UPSTREAM"])
        )
        print("URL " + listener.url(), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())


if __name__ == "__main__":
    {"server": serve, "client": client, "sdk": sdk}[sys.argv[1]]()
