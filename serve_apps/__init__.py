"""Ray Serve applications: the semantic search endpoint."""
