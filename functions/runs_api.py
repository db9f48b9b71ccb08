"""HTTP: run status (`GET /api/runs`, `GET /api/runs/{id}`), deploying a retired run again
(`POST /api/runs/{id}/deploy`) and the API's OpenAPI document (`GET /api/openapi.json`)."""

import json

import azure.functions as func

bp = func.Blueprint()


def _json(doc, status: int = 200, headers: dict | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(doc), status_code=status, headers=headers, mimetype="application/json")


def _error(err) -> func.HttpResponse:
    from shared.scoring import error_body

    return _json(error_body(err), err.status, err.headers)


def _no_run(run_id: str):
    from shared.scoring import ApiError

    return ApiError(404, "run_not_found", f"no run {run_id[:80]!r}; GET /api/runs lists runs")


@bp.route(route="runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    from shared.bootstrap import services
    from shared.scoring import ApiError, run_query, run_view

    try:
        query = run_query(req.params)
    except ApiError as err:
        return _error(err)
    runs = services().runs.list(states=query.states or None, limit=query.limit)
    return _json({"runs": [run_view(r) for r in runs], "count": len(runs)})


@bp.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run(req: func.HttpRequest) -> func.HttpResponse:
    from shared.bootstrap import services
    from shared.scoring import is_run_id, run_view

    run_id = req.route_params["run_id"]
    run = services().runs.find(run_id) if is_run_id(run_id) else None
    return _json(run_view(run)) if run is not None else _error(_no_run(run_id))


@bp.route(route="runs/{run_id}/deploy", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def deploy_run(req: func.HttpRequest) -> func.HttpResponse:
    from shared.bootstrap import services
    from shared.ml.port import MLBackendError
    from shared.orchestration import NotRedeployable, redeploy
    from shared.run_store import RunNotFound
    from shared.scoring import ApiError, is_run_id, run_view

    run_id = req.route_params["run_id"]
    try:
        if not is_run_id(run_id):
            raise RunNotFound(run_id)
        run = redeploy(services(), run_id)
    except RunNotFound:
        return _error(_no_run(run_id))
    except NotRedeployable as exc:
        return _error(ApiError(409, "not_redeployable", str(exc)))
    except MLBackendError as exc:
        return _error(ApiError(503, "backend_unavailable", f"the deployment could not be begun: {exc}; try again",
                               {"Retry-After": "30"}))
    return _json(run_view(run), 202, {"Location": f"/api/runs/{run.run_id}"})


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    from shared.openapi import openapi_document

    return _json(openapi_document())
