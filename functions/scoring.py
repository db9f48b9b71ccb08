"""HTTP: the scoring proxy. `POST /api/score[/{model}]` takes the Azure ML scoring format; `/api/v1/...` speaks
OpenAI's Chat Completions and model list. Async, so the host awaits them on its loop with one pooled client."""

import azure.functions as func

from functions.http_reply import http_response

bp = func.Blueprint()


@bp.route(route="score/{model?}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def score(req: func.HttpRequest) -> func.HttpResponse:
    from shared.scoring_proxy import proxy

    return http_response(await proxy().score(req.route_params.get("model") or None, req.get_body(), req.headers))


@bp.route(route="v1/chat/completions", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def chat_completions(req: func.HttpRequest) -> func.HttpResponse:
    from shared.scoring_proxy import proxy

    return http_response(await proxy().chat(req.get_body(), req.headers))


@bp.route(route="v1/models/{model?}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def models(req: func.HttpRequest) -> func.HttpResponse:
    from shared.scoring_proxy import proxy

    return http_response(await proxy().models(req.route_params.get("model") or None))
