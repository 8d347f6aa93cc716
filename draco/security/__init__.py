"""The security core; read it first. Standard library only (the Redis store imports
redis where it is used): the client address behind trusted proxies, the exact
sliding-window limiter and its stores, and the API-key ring. Nothing here knows
about HTTP frameworks, routes or providers; draco.web applies it to requests."""
