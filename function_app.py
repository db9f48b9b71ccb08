"""The Function App: one Blueprint per module of `functions/`. Nothing heavy is imported here."""

import azure.functions as func

from functions import health

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (health.bp,):
    app.register_functions(blueprint)
