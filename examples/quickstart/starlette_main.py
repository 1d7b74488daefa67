from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from aegis_mw import AegisMiddleware


async def user(request):
    return JSONResponse({"user_id": request.path_params["user_id"]})


app = Starlette(
    routes=[Route("/users/{user_id:int}", user)],
    middleware=[Middleware(AegisMiddleware, sink="sqlite:///aegis.db")],
)
