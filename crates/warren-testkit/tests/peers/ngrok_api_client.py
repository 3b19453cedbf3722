"""ngrok's official API client (PyPI `ngrok-api`) against warren's REST API: lists every
resource the client knows and warren serves, two items a page, following `next_page_uri` as
the client does. Prints `LIST <resource> <count>` per resource, or `ERROR <resource> <text>`.

Environment: WARREN_API (base URL), WARREN_API_KEY.
"""

import os

import ngrok

client = ngrok.Client(os.environ["WARREN_API_KEY"], base_url=os.environ["WARREN_API"])
for name in [
    "api_keys",
    "credentials",
    "ip_policies",
    "ip_policy_rules",
    "ip_restrictions",
    "reserved_addrs",
    "reserved_domains",
    "tls_certificates",
    "tunnel_sessions",
    "endpoints",
    "tunnels",
]:
    try:
        items = list(getattr(client, name).list(limit=2))
        print("LIST %s %d" % (name, len(items)), flush=True)
    except Exception as e:
        print("ERROR %s %s" % (name, " ".join(str(e).split())), flush=True)
