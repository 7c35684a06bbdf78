"""API authentication: scoped bearer tokens and failed-auth rate limiting (issue 10)."""
