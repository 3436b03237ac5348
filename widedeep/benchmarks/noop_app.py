"""A no-op FastAPI deployment: Serve's own latency floor (proxy -> replica -> back), which the
benchmark measures beside the recommender on the same Serve instance. It reads the body like the
real routes do and returns a tiny JSON answer."""

from fastapi import FastAPI, Request
from ray import serve

noop_api = FastAPI()


@serve.deployment(name="Noop", max_ongoing_requests=32)
@serve.ingress(noop_api)
class Noop:
    @noop_api.post("/")
    async def noop(self, request: Request) -> dict[str, int]:
        await request.body()
        return {"ok": 1}
