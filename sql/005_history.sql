-- coingest schema, version 5: CoinGecko history and OHLC candles (docs/history.md).
-- Never edit this file once released: add the next NNN_*.sql instead.

-- CoinGecko ids run to 70 characters (2025), and the history job's candle_fill key is
-- "vs_currency:asset_id": widen `product` in both tables so any id fits. MODIFY to the same
-- definition is harmless, so this file can run again after failing halfway.
ALTER TABLE candles MODIFY product VARCHAR(255) NOT NULL COMMENT 'the source''s market, e.g. BTC-USD; coingecko: the coin id';
ALTER TABLE candle_fill MODIFY product VARCHAR(300) NOT NULL COMMENT 'coingecko history: vs_currency:asset_id';
