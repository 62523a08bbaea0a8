"""FastAPI app for sonde's HTTP tests: path parameters, a 500, a slow route."""
import time

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/items/{item_id}")
def item(item_id: int):
    return {"id": item_id}


@app.get("/fail")
def fail():
    return PlainTextResponse("boom", status_code=500)


@app.get("/slow")
def slow():
    time.sleep(0.3)
    return {"slow": True}


@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return {"len": len(body)}
