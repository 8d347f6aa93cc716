"""HTTP: the middleware that applies the security core to requests, the routes, the
error envelope, the OpenAPI document and the metrics."""
