"""Asset ingestion: fetch, extract, chunk, embed, store."""
