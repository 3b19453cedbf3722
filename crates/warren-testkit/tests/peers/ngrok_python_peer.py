"""A real ngrok SDK peer (PyPI `ngrok`) for warren's compatibility test.

Environment: WARREN_CONNECT (host:port), WARREN_CA (PEM path), WARREN_TOKEN, HTTP_UPSTREAM
(host:port), TCP_UPSTREAM (host:port). Prints one line per result, then keeps the session
open until stdin closes.
"""

import asyncio
import os
import sys

import ngrok


def builder(token):
    with open(os.environ["WARREN_CA"], "rb") as f:
        ca = f.read()
    return ngrok.SessionBuilder().authtoken(token).server_addr(os.environ["WARREN_CONNECT"]).ca_cert(bytearray(ca))


async def main():
    try:
        await builder("cr_2wrongwrongwrongwrongwrong_notatoken").connect()
        print("AUTHERR none", flush=True)
    except Exception as e:  # the SDK raises a plain ValueError/Exception with ngrok's text
        print("AUTHERR " + " ".join(str(e).split()), flush=True)

    session = await builder(os.environ["WARREN_TOKEN"]).connect()
    https = await session.http_endpoint().domain("py.warren.localhost").listen_and_forward(
        "http://" + os.environ["HTTP_UPSTREAM"]
    )
    print("HTTPS " + https.url(), flush=True)
    tcp = await session.tcp_endpoint().listen_and_forward("tcp://" + os.environ["TCP_UPSTREAM"])
    print("TCP " + tcp.url(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
