"""HTTP: model lines (`GET /api/lines`, `GET /api/lines/{line}`) and a line's rollback
(`POST /api/lines/{line}/rollback`)."""

import azure.functions as func

from functions.http_reply import http_response

bp = func.Blueprint()


@bp.route(route="lines", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_lines(req: func.HttpRequest) -> func.HttpResponse:
    from shared.bootstrap import services
    from shared.rollout import lines_reply

    return http_response(lines_reply(services()))


@bp.route(route="lines/{line}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def get_line(req: func.HttpRequest) -> func.HttpResponse:
    from shared.bootstrap import services
    from shared.rollout import line_reply

    return http_response(line_reply(services(), req.route_params["line"]))


@bp.route(route="lines/{line}/rollback", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def rollback(req: func.HttpRequest) -> func.HttpResponse:
    from shared.bootstrap import services
    from shared.rollout import rollback_reply

    return http_response(rollback_reply(services(), req.route_params["line"]))
