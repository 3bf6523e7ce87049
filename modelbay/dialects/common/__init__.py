"""What every dialect shares: the size-limited body reader and the parsing of query parameters."""
