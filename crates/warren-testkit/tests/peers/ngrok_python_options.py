"""The PyPI `ngrok` SDK's endpoint options against warren: each of the options the outside
review tried (basic auth, allow/deny CIDR, OAuth, webhook verification, a request header),
and compression, the circuit breaker, response headers, a User-Agent filter and OIDC, is bound with it and the result printed: `BOUND <name> <url>` or `REFUSED <name> <error>`.

Environment: WARREN_CONNECT (host:port), WARREN_CA (PEM path), WARREN_TOKEN, HTTP_UPSTREAM
(host:port), OIDC_ISSUER (an OpenID Connect provider whose client `warren-web` may return to
py-oidc's callback). Keeps the session open until stdin closes.
"""

import asyncio
import os
import sys

import ngrok


async def main():
    with open(os.environ["WARREN_CA"], "rb") as f:
        ca = f.read()
    session = await (
        ngrok.SessionBuilder()
        .authtoken(os.environ["WARREN_TOKEN"])
        .server_addr(os.environ["WARREN_CONNECT"])
        .ca_cert(bytearray(ca))
        .connect()
    )
    upstream = "http://" + os.environ["HTTP_UPSTREAM"]
    cases = [
        ("basic", lambda b: b.basic_auth("alice", "password123")),
        ("allow", lambda b: b.allow_cidr("10.0.0.0/8")),
        ("deny", lambda b: b.deny_cidr("127.0.0.0/8")),
        ("oauth", lambda b: b.oauth("google")),
        ("webhook", lambda b: b.webhook_verification("github", "s3cret")),
        ("header", lambda b: b.request_header("X-Added", "yes")),
        ("gzip", lambda b: b.compression()),
        ("breaker", lambda b: b.circuit_breaker(0.5)),
        ("resp", lambda b: b.response_header("X-From-Edge", "1").remove_response_header("content-type")),
        ("ua", lambda b: b.deny_user_agent("(?i)badbot")),
        ("oidc", lambda b: b.oidc(os.environ["OIDC_ISSUER"], "warren-web", "web-secret", allow_emails=["alice@example.test"])),
    ]
    for name, option in cases:
        builder = session.http_endpoint().domain("py-%s.warren.localhost" % name)
        option(builder)
        try:
            listener = await builder.listen_and_forward(upstream)
            print("BOUND %s %s" % (name, listener.url()), flush=True)
        except Exception as e:
            print("REFUSED %s %s" % (name, " ".join(str(e).split())), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
