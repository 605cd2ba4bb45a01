"""The bottom layer: shared low-level code that every app may use and that imports no app
of this project (request id and timer middleware, API errors, pagination, database
helpers, test helpers). Not a Django app: it has no models, commands or checks."""
