"""GET /api/health: the app is up and its settings are readable."""

import json

import azure.functions as func

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    from shared.config import SettingError, get_settings

    try:
        settings = get_settings()
    except SettingError as exc:
        return func.HttpResponse(json.dumps({"status": "misconfigured", "error": str(exc)}), status_code=500,
                                 mimetype="application/json")
    body = {"status": "ok", "ml_backend": settings.ml_backend, "messaging": settings.messaging}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")
