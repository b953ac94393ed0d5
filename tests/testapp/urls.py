from __future__ import annotations

from django.contrib import admin
from django.urls import path

from tests.testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("create/", views.create),
    path("slow-first-time/", views.slow_first_time),
    path("status/<int:code>/", views.status),
    path("binary/", views.binary),
    path("explode/", views.explode),
    path("stream/", views.stream),
    path("exempt/", views.exempt),
    path("decorated/", views.decorated_required),
    path("decorated-put/", views.decorated_put),
    path("decorated-explode/", views.decorated_explode),
    path("decorated-template/", views.decorated_template),
    path("async-decorated-template/", views.async_decorated_template),
    path("async/", views.async_create),
    path("async-plain/", views.async_plain),
    path("cbv-class/", views.DecoratedClassView.as_view()),
    path("cbv-dispatch/", views.DispatchDecoratedView.as_view()),
    path("echo/", views.echo_json),
]
