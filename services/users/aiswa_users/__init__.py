"""The users service: users, roles, API keys and short-lived JWTs."""
