"""HTTP: run status (`GET /api/runs`, `GET /api/runs/{id}`), deploying a retired run again
(`POST /api/runs/{id}/deploy`) and the API's OpenAPI document (`GET /api/openapi.json`)."""

import azure.functions as func

from functions.http_reply import http_response

bp = func.Blueprint()


@bp.route(route="runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    from shared.api_errors import ApiError, error_reply, json_reply
    from shared.bootstrap import services
    from shared.run_views import run_query, run_view

    try:
        query = run_query(req.params)
    except ApiError as err:
        return http_response(error_reply(err))
    runs = services().runs.list(states=query.states or None, limit=query.limit)
    return http_response(json_reply({"runs": [run_view(r) for r in runs], "count": len(runs)}))


@bp.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_run(req: func.HttpRequest) -> func.HttpResponse:
    from shared.api_errors import error_reply, json_reply, run_not_found
    from shared.bootstrap import services
    from shared.run_views import is_run_id, run_view

    run_id = req.route_params["run_id"]
    run = services().runs.find(run_id) if is_run_id(run_id) else None
    return http_response(json_reply(run_view(run)) if run is not None else error_reply(run_not_found(run_id)))


@bp.route(route="runs/{run_id}/deploy", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def deploy_run(req: func.HttpRequest) -> func.HttpResponse:
    from shared.api_errors import api_error, error_reply, json_reply, run_not_found
    from shared.bootstrap import services
    from shared.orchestration import redeploy
    from shared.run_views import is_run_id, run_view

    run_id = req.route_params["run_id"]
    if not is_run_id(run_id):
        return http_response(error_reply(run_not_found(run_id)))
    try:
        run = redeploy(services(), run_id)
    except Exception as exc:  # api_error maps the domain's refusals and re-raises anything else
        return http_response(error_reply(api_error(exc, run_id)))
    return http_response(json_reply(run_view(run), 202, {"Location": f"/api/runs/{run.run_id}"}))


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    from shared.api_errors import json_reply
    from shared.openapi import openapi_document

    return http_response(json_reply(openapi_document()))
