"""The balancer: one per app, in front of its workers; never more than one request per worker."""
