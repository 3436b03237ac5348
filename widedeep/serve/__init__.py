"""widedeep.serve: what a serving replica loads, and nothing else (import-linter checks it).

- ``bundle`` / ``bundle_uri`` / ``manifest``  load and verify a bundle (local or at a URI)
- ``scoring`` / ``towers``   the ranker and the user tower as request-time scorers (and their file formats)
- ``pipeline``               one request through prepare -> retrieve -> rank
- ``deployments`` / ``ingress`` / ``app``   the Ray Serve deployments, the HTTP API, the app builder
- ``schemas``                request / response / app-argument models; ``telemetry`` the replica's metrics

Bundles are built offline by ``widedeep.export``.
"""
