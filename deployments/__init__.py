"""Ray Serve deployments: thin wiring of ``app`` objects, one ``app`` per module."""
