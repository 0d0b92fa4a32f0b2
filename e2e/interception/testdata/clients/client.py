# One GET with a Python HTTP client as an app would write it, with no proxy
# setting: python3 client.py KIND URL prints "STATUS X-MINIMESH-ERROR" ("-"
# when absent). KIND: urllib, requests, httpx, aiohttp, urllib3.
import sys

kind, url = sys.argv[1], sys.argv[2]


def show(status, headers):
    print(status, headers.get("X-Minimesh-Error") or "-")


if kind == "urllib":
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            show(r.status, r.headers)
    except urllib.error.HTTPError as e:
        show(e.code, e.headers)
elif kind == "requests":
    import requests

    r = requests.get(url, timeout=10)
    show(r.status_code, r.headers)
elif kind == "httpx":
    import httpx

    r = httpx.get(url, timeout=10)
    show(r.status_code, r.headers)
elif kind == "aiohttp":
    import asyncio

    import aiohttp

    async def main():
        # trust_env is False by default: aiohttp ignores HTTP_PROXY.
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as r:
                show(r.status, r.headers)

    asyncio.run(main())
elif kind == "urllib3":
    import urllib3

    r = urllib3.PoolManager().request("GET", url, timeout=10, retries=False)
    show(r.status, r.headers)
else:
    sys.exit("unknown kind " + kind)
