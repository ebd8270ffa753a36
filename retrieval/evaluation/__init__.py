"""The user's offline evaluation of retrieval quality: slide and case benchmarks and their metrics."""
