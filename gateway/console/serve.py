"""Serving the console's three static files with strict security and cache headers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC = Path(__file__).parent / "static"

#: Everything the page loads comes from its own origin; no inline script or style, no frames,
#: no forms, no plugins. The sparklines are SVG elements built with the DOM, which CSP allows.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The files: URL name -> (file, media type).
FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "console.js": ("console.js", "text/javascript; charset=utf-8"),
    "console.css": ("console.css", "text/css; charset=utf-8"),
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the page, read once at start-up."""

    body: bytes
    media_type: str
    etag: str

    @classmethod
    def read(cls, path: Path, media_type: str) -> Asset:
        """Read ``path`` (blocking; a few kB, once, when the app is built)."""
        body = path.read_bytes()
        return cls(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    def headers(self) -> dict[str, str]:
        """The security and cache headers of every file of the page."""
        # no-cache, not max-age: the browser revalidates (a 304 by ETag), so that after an upgrade
        # the page and its script always come from the same release.
        return {
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin",
            "Cache-Control": "no-cache",
            "ETag": self.etag,
        }


class Console:
    """The console's files and the handler that serves them."""

    def __init__(self, directory: Path = STATIC) -> None:
        self.assets = {name: Asset.read(directory / file, media) for name, (file, media) in FILES.items()}

    async def serve(self, request: Request) -> Response:
        """``GET /console`` and ``/console/console.{js,css}``; any other name under it: 404."""
        asset = self.assets.get(request.path_params.get("asset", ""))  # "": the page itself
        if asset is None:
            raise HTTPException(404, "not found: the console's files are /console, /console/console.js and .css")
        headers = asset.headers()
        if asset.etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    def routes(self) -> list[Route]:
        """The page at ``/console`` and its two files beside it."""
        return [
            Route("/console", self.serve, methods=["GET"]),
            Route("/console/{asset}", self.serve, methods=["GET"]),
        ]
