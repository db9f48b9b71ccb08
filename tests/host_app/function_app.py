"""Test function app: each function records its invocation as a JSON file under $HOSTAPP_RECORDS/<function>/,
and fails when its input asks it to. Names come from app settings through %NAME% binding expressions."""

from __future__ import annotations

import json
import os
import time
import uuid

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def record(function: str, **fields) -> None:
    folder = os.path.join(os.environ["HOSTAPP_RECORDS"], function)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, uuid.uuid4().hex)
    with open(path + ".tmp", "w") as f:
        json.dump({"at": time.time(), **fields}, f)
    os.replace(path + ".tmp", path + ".json")  # tests never read half a record


@app.blob_trigger(arg_name="client", path="%HOSTAPP_CONTAINER%/{name}", connection="AzureWebJobsStorage",
                  source=func.BlobSource.EVENT_GRID)
def on_upload(client: blob.BlobClient) -> None:
    content = client.download_blob().readall()
    record("on_upload", name=client.blob_name, container=client.container_name, content=content.decode())
    if content.startswith(b"fail"):
        raise ValueError("asked to fail")


@app.blob_trigger(arg_name="stream", path="%HOSTAPP_STREAM_CONTAINER%/in/{name}", connection="AzureWebJobsStorage")
async def on_stream(stream: func.InputStream) -> None:  # async: run on the host's loop from a listener thread
    record("on_stream", name=stream.name, length=stream.length, content=stream.read().decode())


@app.service_bus_queue_trigger(arg_name="msg", queue_name="%HOSTAPP_QUEUE%", connection="ServiceBusConnection")
def on_message(msg: func.ServiceBusMessage) -> None:
    body = json.loads(msg.get_body())
    record("on_message", message_id=msg.message_id, delivery_count=msg.delivery_count, body=body,
           enqueued=msg.enqueued_time_utc.timestamp() if msg.enqueued_time_utc else None)
    time.sleep(body.get("sleep", 0))
    if body.get("fail"):
        raise RuntimeError("asked to fail")


@app.service_bus_queue_trigger(arg_name="msg", queue_name="%HOSTAPP_QUEUE%/$deadletterqueue",
                               connection="ServiceBusConnection")
def on_dead_letter(msg: func.ServiceBusMessage) -> None:
    record("on_dead_letter", message_id=msg.message_id, delivery_count=msg.delivery_count,
           body=json.loads(msg.get_body()), reason=msg.dead_letter_reason,
           description=msg.dead_letter_error_description, source=msg.dead_letter_source)


@app.route(route="items/{id}", methods=["GET"])
def get_item(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"id": req.route_params["id"], "q": req.params.get("q"),
                                         "function": context.function_name}),
                             mimetype="application/json")


@app.route(route="echo", methods=["POST"])
async def echo(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.get_body(), status_code=201, headers={"X-Echo-Length": str(len(req.get_body()))},
                             mimetype="application/octet-stream")


@app.route(route="models/{model?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def models(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.route_params.get("model") or "default")


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse('{"status":"ok"}', mimetype="application/json")


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom")


@app.event_grid_trigger(arg_name="event")
def on_event(event: func.EventGridEvent) -> None:
    data = event.get_json()
    record("on_event", id=event.id, type=event.event_type, subject=event.subject, data=data,
           time=event.event_time.isoformat() if event.event_time else None)
    if data.get("fail"):
        raise RuntimeError("asked to fail")


@app.timer_trigger(arg_name="timer", schedule="%HOSTAPP_TICK%")
def tick(timer: func.TimerRequest) -> None:
    record("tick", past_due=timer.past_due)


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", run_on_startup=True)
def on_startup(timer: func.TimerRequest) -> None:
    record("on_startup", past_due=timer.past_due)
