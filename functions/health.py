"""GET /api/health: the app is up and its settings are readable and fit where it runs."""

import json

import azure.functions as func

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    from shared.config import MisconfiguredForAzure, SettingError, check_runtime, get_settings

    try:
        settings = get_settings()
        check_runtime(settings)  # the same check services() makes before any trigger runs
    except SettingError as exc:
        # 503: the app is up but cannot serve until a setting is fixed; the message names each setting.
        body = {"status": "misconfigured", "error": str(exc)}
        if isinstance(exc, MisconfiguredForAzure):
            body["settings"] = [{"name": name, "fix": fix} for name, fix in exc.problems]
        return func.HttpResponse(json.dumps(body), status_code=503, mimetype="application/json")
    body = {"status": "ok", "ml_backend": settings.ml_backend, "messaging": settings.messaging}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")
