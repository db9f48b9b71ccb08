"""The one translation of the app's HTTP replies (`shared.api_errors.Reply`: body, status, headers, content type)
into the Functions worker's response type, shared by the HTTP entrypoints."""

import azure.functions as func


def http_response(reply) -> func.HttpResponse:
    return func.HttpResponse(body=reply.body, status_code=reply.status, headers=reply.headers,
                             mimetype=reply.content_type)
