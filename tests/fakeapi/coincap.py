#!/usr/bin/env python3
"""coincap: a small stand-in for CoinCap v3 (rest.coincap.io/v3), enough for coincap_history.

Standard library only; fakeapi.py's server (same options, /_control/ API and request log) with
CoinCap's routes under /v3 (base_url = http://127.0.0.1:PORT/v3):

  GET /v3/assets?ids=a,b&limit=N | ?limit=N  {"data":[asset...],"timestamp":ms}: assets
                                   `bitcoin`, `ethereum`, `binance-coin` and `coin-1`..`coin-N`
                                   (--assets N, default 5), numbers as strings like the API
  GET /v3/assets/{id}/history?interval=d1|h1&start=ms&end=ms
                                   {"data":[{"priceUsd","time","date"}...]}: one point per day
                                   (00:00 UTC) or hour in [start, end] before the current one;
                                   about 1 in --gaps N missing (deterministic); more than 2000
                                   points asked for is a 400
  errors                           {"error": "..."}
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakeapi  # noqa: E402
from fakeapi import ApiError, unit  # noqa: E402

NOT_FOUND = b'{"error":"Not found"}'
STEP = {"d1": 86400000, "h1": 3600000}


def asset(aid, rank):
    price = 10.0 + rank
    names = {"bitcoin": ("BTC", "Bitcoin"), "ethereum": ("ETH", "Ethereum"),
             "binance-coin": ("BNB", "BNB")}
    sym, name = names.get(aid, (aid.upper().replace("-", ""), aid.title()))
    return {"id": aid, "rank": str(rank), "symbol": sym, "name": name,
            "supply": "1000000.0000000000000000", "maxSupply": None,
            "marketCapUsd": "%.16f" % (price * 1e6), "volumeUsd24Hr": "1000.0000000000000000",
            "priceUsd": "%.16f" % price, "changePercent24Hr": "0.5", "vwap24Hr": "%.4f" % price,
            "explorer": None, "tokens": {}}


class CoinCapRoutes:
    def __init__(self, app):
        self.app = app
        ids = ["bitcoin", "ethereum", "binance-coin"]
        ids += ["coin-%d" % i for i in range(1, app.args.assets + 1)]
        self.assets = {aid: asset(aid, k + 1) for k, aid in enumerate(ids)}
        self.order = ids
        self.gaps = app.args.gaps

    def route(self, path, params):
        now = int(time.time() * 1000)
        if path == "/assets":
            want = [i for i in params.get("ids", "").split(",") if i] or self.order
            limit = int(params.get("limit", "100"))
            data = [self.assets[i] for i in want if i in self.assets][:limit]
            return {"data": data, "timestamp": now}
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "assets" and parts[2] == "history":
            return self.history(parts[1], params, now)
        raise ApiError(404, NOT_FOUND)

    def history(self, aid, params, now):
        if aid not in self.assets:
            raise ApiError(404, NOT_FOUND)
        step = STEP.get(params.get("interval"))
        if not step:
            raise ApiError(400, {"error": "use interval d1 or h1"})
        start, end = int(params.get("start", "0")), int(params.get("end", "0"))
        first = start + (-start) % step
        if (end - first) // step + 1 > 2000:
            raise ApiError(400, {"error": "too many points"})
        current = now - now % step
        k = self.order.index(aid)
        out = []
        for t in range(first, end + 1, step):
            if t >= current:
                break
            if self.gaps and int(abs(unit(k, t // step, 9)) * 1000003) % self.gaps == 0:
                continue
            p = 10.0 + k + unit(k, t // step, 3)
            out.append({"priceUsd": "%.16f" % p, "time": t,
                        "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t / 1000))})
        return {"data": out, "timestamp": now}


class Handler(fakeapi.Handler):
    prefix = "/v3"
    not_found_body = NOT_FOUND


def build_parser():
    p = fakeapi.build_parser()
    p.description = "Fake CoinCap v3 API for coingest's tests."
    p.add_argument("--assets", type=int, default=5, help="synthetic assets coin-1..coin-N")
    p.add_argument("--gaps", type=int, default=0, help="leave out about 1 in N points")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return fakeapi.serve(args, CoinCapRoutes, Handler)


if __name__ == "__main__":
    sys.exit(main())
