"""A Flask app with aegis_mw: every request lands in aegis.db (SQLite).

Run it:
    gunicorn -w 2 -b 127.0.0.1:8000 examples.flask_app:app
then open http://127.0.0.1:8000/dashboard (live over ws://127.0.0.1:8765, a
server thread of the first worker), scrape http://127.0.0.1:8000/metrics or
ask http://127.0.0.1:8000/api/metrics/overview?range=1h.

Options come from app.config keys with an AEGIS_ prefix (or AEGIS_* variables).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, jsonify, stream_with_context

from aegis_mw.contrib.flask import Aegis

app = Flask(__name__)
app.config["AEGIS_SINK"] = "sqlite:///aegis.db"
app.config["AEGIS_WS_PORT"] = int(os.environ.get("AEGIS_WS_PORT", "8765"))
items = Blueprint("items", __name__, url_prefix="/api/items")


@items.get("/<int:item_id>")
def read_item(item_id: int) -> Response:
    return jsonify(item_id=item_id)


@app.get("/")
def home() -> str:
    return "hello from Flask"


@app.get("/stream")
def stream() -> Response:
    def chunks() -> Iterator[str]:
        for number in range(3):
            yield f"chunk {number}\n"

    return Response(stream_with_context(chunks()), mimetype="text/plain")


@app.get("/fail")
def fail() -> str:
    raise RuntimeError("this endpoint fails on purpose")


app.register_blueprint(items)
aegis = Aegis(app)
