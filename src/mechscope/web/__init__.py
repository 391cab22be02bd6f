"""The local web app (`mechscope ui`): an HTTP API on one loaded model and a static page that draws it.

`create_app` builds the FastAPI app on an `Analyzer`; `serve` runs it with uvicorn on 127.0.0.1 (or, with
an explicit flag, elsewhere behind a random access token). Needs the ``ui`` extra (FastAPI, uvicorn).
"""
