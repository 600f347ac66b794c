"""The Campaigns view in the Airflow UI: every campaign, and one campaign's page (an Airflow 3
FastAPI plugin app, served by the API server, linked from the UI's navigation).

Mounted at ``/campaigns``. It reads only the warehouse (``include.campaign.report``).
Only signed-in Airflow users who may read DAGs see it: the user comes from
Airflow's auth manager, as for Airflow's own routes (the UI's session cookie or
a Bearer token). A browser that is not signed in is sent to the login page;
any other client gets 401. Every response, errors and the CSV included, carries
``include.views.pages.SECURITY_HEADERS`` (a strict CSP, nosniff, same-origin framing).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders

URL_PREFIX = "/campaigns"


def _security_headers() -> dict[str, str]:
    # Imported when serving, like the rest of include: see _may_read_dags.
    from include.views.pages import SECURITY_HEADERS

    return SECURITY_HEADERS


class _SecureHeaders:
    """ASGI middleware: the security headers on every response the app sends (pages, CSV, errors)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(_security_headers())
            await send(message)

        await self.app(scope, receive, send_secured if scope["type"] == "http" else send)


app = FastAPI(title="Campaigns", docs_url=None, redoc_url=None, openapi_url=None)
app.add_middleware(_SecureHeaders)
_bearer = HTTPBearer(auto_error=False)


async def _may_read_dags(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    # Airflow's own resolution of the user (a Bearer token, else the UI's session cookie), imported
    # here: it is already loaded in the API server, and would cost every other process that loads
    # plugins (the scheduler, the workers) two seconds of imports.
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request, None, credentials)
    if not get_auth_manager().is_authorized_dag(method="GET", user=user):
        raise HTTPException(status_code=403, detail="reading campaigns needs permission to read DAGs")
    return user


Reader = Annotated[Any, Depends(_may_read_dags)]


@app.exception_handler(HTTPException)
async def _login_or_error(request: Request, exc: HTTPException) -> Response:
    # A page opened in a browser goes to the login and comes back; an API client gets the status.
    if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=302)
    return Response(exc.detail, status_code=exc.status_code, media_type="text/plain")


@app.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception) -> Response:
    # Starlette answers an unhandled error outside the middleware, so the headers are set here.
    return Response(
        "internal server error", status_code=500, media_type="text/plain", headers=_security_headers()
    )


def _hook():
    from include.warehouse import get_warehouse_hook

    return get_warehouse_hook()


@app.get("/", response_class=HTMLResponse)
async def campaign_list(_user: Reader) -> str:
    from include.campaign import report
    from include.views import pages

    return pages.campaign_list(await run_in_threadpool(lambda: report.campaigns(_hook())))


@app.get("/{campaign_id}", response_class=HTMLResponse)
async def campaign_page(campaign_id: str, _user: Reader) -> str:
    from include.campaign import report
    from include.views import pages

    found = await run_in_threadpool(lambda: report.campaign(_hook(), campaign_id))
    if found is None:
        raise HTTPException(status_code=404, detail=f"no campaign {campaign_id!r}")
    return pages.campaign_page(found)


@app.get("/{campaign_id}/rejected.csv")
async def rejected_csv(campaign_id: str, _user: Reader) -> StreamingResponse:
    from include.campaign import report
    from include.views.spreadsheet import csv_chunks

    hook = await run_in_threadpool(_hook)
    if not await run_in_threadpool(lambda: report.campaigns(hook, campaign_id)):
        raise HTTPException(status_code=404, detail=f"no campaign {campaign_id!r}")

    filename = quote(f"{campaign_id}-rejected.csv", safe="")
    return StreamingResponse(
        # Streamed: a million rejected rows never sit in memory. No cell is a formula.
        csv_chunks(report.rejected_rows(hook, campaign_id)),
        media_type="text/csv",
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{filename}"},
    )


class MigoSmtpCampaignsPlugin(AirflowPlugin):
    name = "migosmtp_campaigns"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "MigoSMTP campaigns"}]
    external_views = [
        {
            "name": "Campaigns",
            "href": f"{URL_PREFIX}/",
            "url_route": "campaigns",
            "destination": "nav",
            "category": "browse",
        }
    ]
