"""fakeapi cg_history: /coins/{id}/market_chart/range and /coins/{id}/ohlc for the synthetic
universe (imported by fakeapi.py; standard library only).

Times are the real clock's (the daemon plans its windows from it). The rules are CoinGecko's
(docs/history.md cites them):

  * market_chart/range picks the granularity from the range: to - from of at most one day
    that ends within the last day is 5-minutely, any other range up to 90 days hourly,
    longer ranges daily at 00:00 UTC. Hourly and 5-minutely points are not on the grid: each
    sits a coin- and slot-dependent number of seconds (and milliseconds) after its slot's
    start, as on the real API. A range that reaches now ends with an off-grid "now" point.
  * from older than --history-reach-days (default 365; 0: no limit) answers HTTP 401 with
    the real body of error_code 10012.
  * Gaps: about 1 point in 60 is missing (the same ones for every range), and coins whose
    number ends in 7 were listed only 200 days ago (nothing older).
  * ohlc?days=N: 30-minute candles for 1-2 days, 4-hour for 3-30, 4-day beyond; each
    candle's time is its close, on the grid; the last one closes in the future and its
    values move with the clock until it has closed.

series_points(...) is the oracle the tests compare the database with.
"""

import math
import time

from_error_10012 = (b'{"error":{"status":{"timestamp":"2024-04-20T22:00:05.123+00:00",'
                    b'"error_code":10012,"error_message":"Your request exceeds the allowed time '
                    b'range. Public API users are limited to querying historical data within '
                    b'the past 365 days. Upgrade to a paid plan to enjoy full historical data '
                    b'access: https://www.coingecko.com/en/api/pricing. "}}}')

DAY = 86400
HOUR = 3600
FIVE_MIN = 300
LATE_LISTED_DAYS = 200


def hash01(i, t, k):
    """Deterministic hash in [0, 1) of coin, time slot and channel (fakeapi.unit uses it too)."""
    h = (i * 0x9E3779B1 + t * 0x85EBCA77 + k * 0xC2B2AE3D + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    h = (h * 0x297A2D39) & 0xFFFFFFFF
    h ^= h >> 15
    return h / 4294967296.0


def granularity(frm, to, now):
    """Seconds between points CoinGecko serves for [frm, to] asked at `now`."""
    span = to - frm
    if span <= DAY and to >= now - DAY:
        return FIVE_MIN
    if span <= 90 * DAY:
        return HOUR
    return DAY


def point_ms(i, slot, g):
    """The time (ms) of coin i's point for the slot starting at `slot` (unix s)."""
    if g == DAY:
        return slot * 1000
    # Hourly points land 1-1200 s into the hour, 5-minute ones 1-200 s into their slot.
    spread = 1200 if g == HOUR else 200
    off = 1 + int(hash01(i, slot, 3) * spread)
    return (slot + off) * 1000 + int(hash01(i, slot, 4) * 1000)


def listed_from(i):
    """First second coin i has data for (coins ending in 7 are young)."""
    if i % 10 == 7:
        now = int(time.time())
        return (now - LATE_LISTED_DAYS * DAY) // DAY * DAY
    return 0


def value(coin, t_ms, rate):
    i = coin["i"]
    t = t_ms / 1000.0
    p = coin["price0"] * (1.0 + 0.25 * math.sin(t / (9 * DAY) + i) + 0.02 * math.sin(t / 3600.0))
    p *= rate
    cap = 0.0 if coin.get("zero_cap") else p * coin["circ"]
    vol = p * coin["circ"] * coin["vol_f"]
    return p, cap, vol


def series_points(coin, frm, to, now):
    """The [ms, ...] times of the points market_chart/range serves for [frm, to] at `now`,
    without the trailing "now" point."""
    g = granularity(frm, to, now)
    end = min(to, now)
    start = max(frm, listed_from(coin["i"]))
    out = []
    slot = (start // g) * g
    while slot <= end:
        t = point_ms(coin["i"], slot, g)
        gap = hash01(coin["i"], slot // g, 5) < 1.0 / 60
        if not gap and start * 1000 <= t <= end * 1000:
            out.append(t)
        slot += g
    return out


def market_chart_range(u, coin_id, params, rates, api_error):
    coin = u.by_id.get(coin_id)
    if coin is None:
        raise api_error(404, {"error": "coin not found"})
    vs = (params.get("vs_currency") or "").lower()
    if vs not in rates:
        raise api_error(400, {"error": "invalid vs_currency"})
    try:
        frm = int(float(params["from"]))
        to = int(float(params["to"]))
    except (KeyError, ValueError):
        raise api_error(422, {"error": "from and to are required unix seconds"})
    now = time.time()
    reach = u.history_reach_days
    if reach and frm < now - reach * DAY:
        raise api_error(401, from_error_10012)
    rate = rates[vs]
    times = series_points(coin, frm, to, int(now))
    if to >= now:
        times.append(int(now * 1000))  # the trailing "now" point, off the grid
    prices, caps, vols = [], [], []
    for t in times:
        p, c, v = value(coin, t, rate)
        prices.append([t, p])
        caps.append([t, c])
        vols.append([t, v])
    return {"prices": prices, "market_caps": caps, "total_volumes": vols}


def ohlc_interval(days):
    if days <= 2:
        return 30 * 60
    if days <= 30:
        return 4 * HOUR
    return 4 * DAY


def ohlc(u, coin_id, params, rates, api_error):
    coin = u.by_id.get(coin_id)
    if coin is None:
        raise api_error(404, {"error": "coin not found"})
    vs = (params.get("vs_currency") or "").lower()
    days = params.get("days")
    if vs not in rates or not days:
        raise api_error(500, {"error": "Internal server error"})
    days = 365 * 20 if days == "max" else int(days)
    g = ohlc_interval(days)
    now = time.time()
    last_close = int(math.ceil(now / g)) * g  # the open candle's close, ahead of now
    first_close = int(now - days * DAY) // g * g + g
    out = []
    rate = rates[vs]
    for close in range(first_close, last_close + 1, g):
        if close - g < listed_from(coin["i"]):
            continue
        upto = min(close, now)  # the open candle moves with the clock
        o = value(coin, (close - g) * 1000, rate)[0]
        c = value(coin, int(upto * 1000), rate)[0]
        hi = max(o, c) * (1 + 0.01 * hash01(coin["i"], close, 6))
        lo = min(o, c) * (1 - 0.01 * hash01(coin["i"], close, 7))
        out.append([close * 1000, o, hi, lo, c])
    return out


def route(u, path, params, rates, api_error):
    """Answers /coins/{id}/market_chart/range and /coins/{id}/ohlc; None for other paths."""
    if not path.startswith("/coins/"):
        return None
    rest = path[len("/coins/"):]
    if rest.endswith("/market_chart/range"):
        return market_chart_range(u, rest[:-len("/market_chart/range")], params, rates,
                                  api_error)
    if rest.endswith("/ohlc"):
        return ohlc(u, rest[:-len("/ohlc")], params, rates, api_error)
    return None
