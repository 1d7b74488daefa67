from flask import Flask

from aegis_mw.contrib.flask import Aegis

app = Flask(__name__)


@app.get("/items/<int:item_id>")
def read_item(item_id):
    return {"item_id": item_id}


app.config["AEGIS_SINK"] = "sqlite:///aegis.db"
app.config["AEGIS_WS_PORT"] = 8765  # a WSGI server speaks no WebSocket: the live stream's port
aegis = Aegis(app)
