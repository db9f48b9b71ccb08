"""The Function App: one Blueprint per module of `functions/`. Nothing heavy is imported here."""

import azure.functions as func

from functions import (cleanup, deadletters, deployments, health, ingest, job_events, lines_api, notify, reconcile,
                       runs_api, scoring, submit)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

for module in (health, ingest, submit, job_events, deployments, scoring, runs_api, lines_api, cleanup, reconcile,
               deadletters, notify):
    app.register_functions(module.bp)
