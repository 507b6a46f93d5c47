/*
 * The registered sources, one line each: SOURCE(name) names the `struct source_def name_source`
 * that src/sources/name/ defines. src/source.c expands this list into the registry
 * (docs/architecture.md, "Adding a source").
 */
SOURCE(coingecko)
SOURCE(coinbase)
SOURCE(analytics)
SOURCE(coincap)
SOURCE(export)
