"""/seen → what Django tells a view about the server, the host and one header, as JSON."""

from django.http import JsonResponse
from django.urls import path


def seen(request):
    return JsonResponse({
        "SERVER_NAME": request.META.get("SERVER_NAME"),
        "SERVER_PORT": request.META.get("SERVER_PORT"),
        "REMOTE_ADDR": request.META.get("REMOTE_ADDR"),
        "host": request.get_host(),
        "url": request.build_absolute_uri(),
        "auth_user": request.headers.get("X-Auth-User"),
    })


urlpatterns = [path("seen", seen)]
