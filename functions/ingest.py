"""Blob trigger: a training upload starts a run."""

import logging

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

bp = func.Blueprint()


@bp.blob_trigger(arg_name="client", path="%TRAINING_CONTAINER%/{name}", connection="AzureWebJobsStorage",
                 source=func.BlobSource.EVENT_GRID)
def ingest(client: blob.BlobClient) -> None:
    # An SDK-type binding: the upload is streamed in chunks by the storage SDK, never read whole.
    from shared.bootstrap import services
    from shared.ingestion import ingest_upload

    run = ingest_upload(services(), client.container_name, client.blob_name, client)
    if run is not None:
        logging.info("ingest: %s -> run %s %s", client.blob_name, run.run_id, run.state)
