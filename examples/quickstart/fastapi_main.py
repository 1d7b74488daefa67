from fastapi import FastAPI

from aegis_mw import AegisMiddleware

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int):
    return {"item_id": item_id}


app.add_middleware(AegisMiddleware, sink="sqlite:///aegis.db")  # add it last: outermost
