"""The manager: starts the balancer and the workers, keeps the pool true, rolls restarts."""
