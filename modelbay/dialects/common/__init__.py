"""What every dialect shares: the size-limited body reader, the parsing of query parameters, and the
answer to errors (which status each gets; each dialect gives only its body shape)."""
