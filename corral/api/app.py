"""The FastAPI application: routers under /v1, errors mapped in one table."""

from __future__ import annotations

from fastapi import FastAPI

from corral import __version__, web
from corral.api import errors
from corral.api.audit import AuditMiddleware
from corral.api.deps import Services
from corral.api.models import API_PREFIX
from corral.api.routes import (
    access,
    auth,
    backups,
    balloon,
    cluster,
    consoles,
    daemon,
    disks,
    files,
    files_virtio,
    idle,
    images,
    migrations,
    mounts,
    networks,
    pools,
    portable,
    ports,
    projects,
    quotas,
    sandbox,
    snapshots,
    templates,
    vms,
)
from corral.metrics import route as metrics_route
from corral.metrics.http import MetricsMiddleware


def create_app(svc: Services | None = None) -> FastAPI:
    app = FastAPI(title="Corral", version=__version__,
                  description="Corral's REST API: on a unix socket, and over TCP with TLS and tokens (--listen).")
    app.state.services = svc
    errors.install(app)
    app.add_middleware(AuditMiddleware)
    app.add_middleware(MetricsMiddleware)  # API requests counted by route template (corral.metrics)
    for r in (vms.router, access.router, ports.router, disks.router, networks.router, quotas.router, projects.router,
              files_virtio.router, files.router, images.router, daemon.router, snapshots.router, portable.router,
              backups.router, idle.router, templates.router, balloon.router, pools.router, mounts.router,
              sandbox.router, auth.router, consoles.router, migrations.router, cluster.router):
        app.include_router(r, prefix=API_PREFIX)
    app.include_router(metrics_route.router)  # GET /metrics, beside /v1
    app.router.routes.append(web.page())  # last: the web page at / (docs/explanation/web.md)
    return app
