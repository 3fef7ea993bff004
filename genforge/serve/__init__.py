"""Serving: an HTTP service over genforge's sampling code, with a web page.

``app.py`` the FastAPI app (endpoints, the request gate); ``schemas.py`` its
request and response bodies; ``batching.py`` micro-batching of concurrent
requests; ``keys.py`` API keys and roles; ``limits.py`` rate limits and the
bounded body read; ``audit.py`` the signed, hash-chained audit log;
``monitoring.py`` Prometheus metrics; ``export.py`` ONNX export and the
onnxruntime backend; ``static/`` the page; ``cli.py`` the commands
(``genforge serve``, ``keys``, ``audit verify``, ``export``).

Needs the ``serve`` extra: ``pip install -e '.[serve]'``.
"""
