#!/usr/bin/env python3
"""coinbase: a stand-in for the Coinbase Exchange public REST API (api.exchange.coinbase.com).

Standard library only. It is fakeapi.py's server (same options, the same /_control/ API:
faults, log, reset, ratelimit, state; the same --port 0 --port-file/--port-fd and parent watch)
with Coinbase's routes at the root (base_url = http://127.0.0.1:PORT):

  GET /products                        the recorded 572-product list (default), or with
                                       --products N|ID,ID,... a synthetic list
  GET /products/{id}/candles?granularity=G&start=..&end=..
                                       candles with Coinbase's quirks: G must be one of 60, 300,
                                       900, 3600, 21600, 86400 (else 400); start and end are ISO-8601
                                       or unix seconds and both inclusive; more than 300 candles
                                       asked for is a 400 with the real message; rows are
                                       [time, low, high, open, close, volume], newest first; an
                                       interval without trades is absent (--gaps 1/N of them,
                                       chosen by a hash of product and time, so the same ones
                                       every time); nothing at or after the current interval.
                                       BTC-USD at G=3600 in March 2020 is served from the recorded
                                       pages (tests/fixtures/coinbase/).
  errors                               {"message": "..."}, 404 NotFound, 429 with
                                       {"message":"Public rate limit exceeded"}.

--extra-candle adds the candle just before `start` to every answer: what a client that asks
for pages edge to edge sees (consecutive pages overlap by one candle), so a client must keep
only its window. The request log (GET /_control/log) records every request with its headers,
so tests can check the User-Agent.
"""
import calendar
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakeapi  # noqa: E402
from fakeapi import ApiError, dumps, unit  # noqa: E402

GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
MAX_CANDLES = 300
ERR_429 = b'{"message":"Public rate limit exceeded"}'
NOT_FOUND = b'{"message":"NotFound"}'
TOO_MANY = {"message": "granularity too small for the requested time range. Count of "
                       "aggregations requested exceeds 300"}


def parse_time(s):
    """ISO-8601 (2020-03-09T00:00:00Z, fraction and offset +00:00 allowed) or unix seconds."""
    s = s.strip()
    try:
        return int(float(s))
    except ValueError:
        pass
    t = s.replace("Z", "").replace("+00:00", "")
    if "." in t:
        t = t.split(".", 1)[0]
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(t, fmt))
        except ValueError:
            continue
    raise ApiError(400, {"message": "Invalid start/end time"})


def product_row(pid):
    base, quote = pid.split("-", 1)
    return {"id": pid, "base_currency": base, "quote_currency": quote,
            "quote_increment": "0.01", "base_increment": "0.00000001",
            "display_name": base + "/" + quote, "min_market_funds": "1",
            "margin_enabled": False, "post_only": False, "limit_only": False,
            "cancel_only": False, "status": "online", "status_message": "",
            "trading_disabled": False, "fx_stablecoin": False,
            "max_slippage_percentage": "0.03000000", "auction_mode": False}


class CoinbaseRoutes:
    def __init__(self, app):
        self.app = app
        a = app.args
        self.fixtures = os.path.join(a.fixtures or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"), "coinbase")
        self.gaps = a.gaps
        self.extra = a.extra_candle
        self.products = None
        if a.products:
            if a.products.isdigit():
                ids = ["C%05d-USD" % i for i in range(1, int(a.products) + 1)]
            else:
                ids = [p.strip() for p in a.products.split(",") if p.strip()]
            self.products = dumps([product_row(p) for p in ids])
        self.index = {pid: i for i, pid in enumerate(
            [p["id"] for p in json.loads(self.products)] if self.products else [])}
        self.recorded = {}
        for name in ("candles_BTC-USD_g3600_300rows_2020-03-09..21.json",
                     "candles_BTC-USD_g3600_36rows_2020-03-21..22.json",
                     "candles_BTC-USD_g3600_169rows_2020-03-09..16.json"):
            path = os.path.join(self.fixtures, name)
            if os.path.exists(path):
                for row in json.load(open(path)):
                    self.recorded[row[0]] = row

    def load(self, name):
        with open(os.path.join(self.fixtures, name), "rb") as fh:
            return fh.read()

    def route(self, path, params):
        if path == "/products":
            return self.products or self.load("products_572rows_2022-11-24.json")
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "products" and parts[2] == "candles":
            return self.candles(parts[1], params)
        raise ApiError(404, NOT_FOUND)

    def traded(self, pid, t):
        """Whether interval t of product pid had trades (deterministic)."""
        if not self.gaps:
            return True
        if pid == "BTC-USD" and t in self.recorded:
            return True
        h = int(abs(unit(sum(map(ord, pid)), t, 7)) * 1000003)
        return h % self.gaps != 0

    def candle(self, pid, t, g):
        if pid == "BTC-USD" and g == 3600 and t in self.recorded:
            return self.recorded[t]
        i = self.index.get(pid, sum(map(ord, pid)))
        base = 50.0 + 10.0 * (i % 17)
        o = base * (1 + 0.05 * unit(i, t, 1))
        c = base * (1 + 0.05 * unit(i, t + g, 1))
        hi = max(o, c) * (1 + 0.01 * abs(unit(i, t, 2)))
        lo = min(o, c) * (1 - 0.01 * abs(unit(i, t, 3)))
        vol = round(1000 * (1.5 + unit(i, t, 4)), 8)
        return [t, round(lo, 6), round(hi, 6), round(o, 6), round(c, 6), vol]

    def candles(self, pid, params):
        if self.products is not None and pid not in self.index:
            raise ApiError(404, NOT_FOUND)
        try:
            g = int(params.get("granularity", "60"))
        except ValueError:
            g = 0
        if g not in GRANULARITIES:
            raise ApiError(400, {"message": "Unsupported granularity"})
        now = int(time.time())
        current = now - now % g
        if params.get("start") and params.get("end"):
            start, end = parse_time(params["start"]), parse_time(params["end"])
        else:
            end = current - g
            start = end - (MAX_CANDLES - 1) * g
        if end < start:
            raise ApiError(400, {"message": "start must be before end"})
        first = start + (-start) % g
        if (end - first) // g + 1 > MAX_CANDLES:
            raise ApiError(400, TOO_MANY)
        times = list(range(first, end + 1, g))
        if self.extra:
            times.insert(0, first - g)
        rows = [self.candle(pid, t, g) for t in times if t < current and self.traded(pid, t)]
        rows.sort(key=lambda r: -r[0])
        return rows


class Handler(fakeapi.Handler):
    prefix = ""
    err_429_body = ERR_429
    not_found_body = NOT_FOUND


def build_parser():
    p = fakeapi.build_parser()
    p.description = "Fake Coinbase Exchange API for coingest's tests."
    p.add_argument("--products", help="synthetic product list: a count N (C00001-USD..) or ids")
    p.add_argument("--gaps", type=int, default=0,
                   help="leave out about 1 in N intervals as trade-less (0: none)")
    p.add_argument("--extra-candle", action="store_true",
                   help="answer one candle before start too (pages overlap by one)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return fakeapi.serve(args, CoinbaseRoutes, Handler)


if __name__ == "__main__":
    sys.exit(main())
